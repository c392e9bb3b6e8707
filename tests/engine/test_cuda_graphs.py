"""The CUDA-graph forward's fixed-shape formulation (`static_forward`: attend over the whole cache capacity under
a mask) against the eager path, on the CPU. The capture and replay themselves are tested in tests/gpu."""

from __future__ import annotations

import pytest
import torch

from paperclub.engine.cuda_graphs import graphs_enabled, static_forward
from paperclub.engine.runner import ModelRunner
from tests.conftest import make_pair

pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", ["smollm2-tied", "mistral-sliding", "qwen3-qk-norm"])
@pytest.mark.parametrize("T,last_only", [(1, True), (3, False), (3, True)])
def test_static_forward_matches_the_eager_path(arch, T, last_only):
    _, model, _ = make_pair(arch)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]
    steps = [[21, 22, 23][:T], [31, 32, 33][:T]]
    eager, static = ModelRunner(model, 256), ModelRunner(model, 256)
    for r in (eager, static):
        r.reserve(3, 40)
        r.append([1, 2], [0, 0], prompts, last_only=True)  # slots 1 and 2: a view that does not start at 0
    starts = [len(p) for p in prompts]
    want = eager.append([1, 2], starts, steps, last_only)
    write = torch.tensor(starts)[:, None] + torch.arange(T)[None, :]
    got = static_forward(model, static.cache, torch.tensor(steps), write, 1, last_only)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    for layer in range(model.cfg.num_layers):  # and the same K/V were written
        torch.testing.assert_close(static.cache.k[layer], eager.cache.k[layer], atol=2e-5, rtol=2e-5)


def test_graphs_are_for_cuda_only_and_can_be_turned_off(monkeypatch):
    assert not graphs_enabled(torch.device("cpu"))
    assert graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("PAPERCLUB_CUDA_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda"))


def test_graphs_leave_one_off_and_irregular_shapes_to_the_eager_path():
    from paperclub.engine.cuda_graphs import CudaGraphs

    _, model, _ = make_pair("smollm2-tied")
    runner = ModelRunner(model, 256)
    runner.reserve(4, 32)
    graphs = CudaGraphs(model, runner.cache, max_rows=4, max_tokens=5)
    assert graphs.try_run([0, 1], [3, 3], [[1], [2]], True) is None  # first sight of a shape: eager
    assert graphs.try_run([0, 2], [3, 3], [[1], [2]], True) is None  # slots not consecutive
    assert graphs.try_run([0, 1], [3, 3], [[1], [2, 3]], False) is None  # uneven rows
    assert graphs.try_run([0, 1, 2, 3, 4], [3] * 5, [[1]] * 5, True) is None  # too many rows
    assert graphs.try_run([0], [3], [[1] * 6], False) is None  # too many tokens
    assert graphs.captures == graphs.replays == 0
