import h5py
import numpy as np
import pytest

from paperclub.dmpc.dataset import SCHEMA, load_dataset, save_dataset
from paperclub.errors import UserError

from .helpers import toy_dataset


def test_round_trip_keeps_arrays_and_records_returns(tmp_path):
    data = toy_dataset(episode_lengths=(5, 7))
    summary = save_dataset(tmp_path / "d.h5", data, {"note": "toy"})
    assert summary == {"episodes": 2, "transitions": 12, "return_mean": 6.0, "return_std": 1.0, "return_min": 5.0,
                       "return_max": 7.0}
    back = load_dataset(tmp_path / "d.h5", env="pendulum")
    np.testing.assert_array_equal(back.actions, data.actions)
    np.testing.assert_array_equal(back.episode_starts, data.episode_starts)
    assert back.episode_bounds() == [(0, 5), (5, 12)]
    assert (back.env, back.variant, back.kind) == ("pendulum", None, "toy")
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary left behind


def test_missing_corrupt_and_wrong_files_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist: make one with `paperclub dmpc collect"):
        load_dataset(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(UserError, match="cannot be read as HDF5 .*corrupt or not a dataset"):
        load_dataset(tmp_path / "junk.h5")
    save_dataset(tmp_path / "d.h5", toy_dataset())
    whole = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_dataset(tmp_path / "cut.h5")
    with pytest.raises(UserError, match="collected in env pendulum, not walker2d"):
        load_dataset(tmp_path / "d.h5", env="walker2d")
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f.attrs["schema"] = "something/0"
    with pytest.raises(UserError, match=f"schema 'something/0', not '{SCHEMA}'"):
        load_dataset(tmp_path / "d.h5")
    save_dataset(tmp_path / "d.h5", toy_dataset())
    with h5py.File(tmp_path / "d.h5", "a") as f:
        del f["timeouts"]
    with pytest.raises(UserError, match="lacks timeouts"):
        load_dataset(tmp_path / "d.h5")


def test_inconsistent_arrays_are_refused(tmp_path):
    data = toy_dataset()
    data.rewards = data.rewards[:-1]
    with pytest.raises(UserError, match="has 12 rows, rewards 11"):
        save_dataset(tmp_path / "d.h5", data)
    data = toy_dataset()
    data.observations[3, 0] = np.nan
    with pytest.raises(UserError, match="observations holds NaN"):
        save_dataset(tmp_path / "d.h5", data)
