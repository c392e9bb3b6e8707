"""`paperclub demo` (the README's main job): it lets `--mode auto` weigh speculation with the shipped draft and
says how it decodes."""

from __future__ import annotations

from paperclub.cli import main
from paperclub.speculative import auto


def test_demo_runs_what_auto_picked_and_says_so(default_model_dir, monkeypatch, capsys):
    calls = []

    def stored(key):
        calls.append(key)
        return auto.AutoChoice("sd", 4, None, "SD n-gram+draft K=4 predicted 100.0 tok/s (calibration runs: ...)",
                               {}, "ngram+draft")

    monkeypatch.setattr(auto, "load", stored)  # a stored choice: no calibration in a test
    assert main(["demo", "--model", str(default_model_dir), "--max-new-tokens", "6", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert calls and calls[0]["draft"].endswith("smollm2-135m-draft")  # auto was asked, with the shipped draft
    assert "decoding: SD K=4, draft ngram+smollm2-135m-draft (picked by --mode auto: SD n-gram+draft K=4 " \
           "predicted 100.0 tok/s)" in out
    assert out.count("assistant> ") == 3 and "overall:" in out


def test_demo_with_an_explicit_mode_skips_auto(default_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(auto, "load", lambda key: (_ for _ in ()).throw(AssertionError("auto asked")))
    assert main(["demo", "--model", str(default_model_dir), "--mode", "ar", "--max-new-tokens", "4"]) == 0
    assert "decoding: AR\n" in capsys.readouterr().out
