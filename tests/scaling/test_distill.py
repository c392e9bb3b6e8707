"""A trained run exported for the engine predicts what it predicted in training, and teacher text has the
shape students read."""

from __future__ import annotations

import numpy as np
import torch

from paperclub.engine import LLM, SamplingParams
from paperclub.scaling.distill import export_run, generate_synthetic, prompts_from
from paperclub.scaling.train import RunConfig, load_model, train_run

RUN = RunConfig(size="s0", tokens=8192, epochs=2, lr=1e-2, weight_decay=0.1, batch_size=4, seq_len=64,
                val_tokens=1024)


def test_an_exported_run_generates_in_the_engine_what_the_trained_model_predicts(tiny_corpus, tmp_path):
    train_run(RUN, tiny_corpus, tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tiny_corpus, tmp_path / "hf", RUN.seq_len)
    prompt = [int(t) for t in tiny_corpus.budget(RUN.tokens)[100:116]]
    with LLM(model=tmp_path / "hf", mode="ar", dtype="float32", max_model_len=RUN.seq_len + 2) as llm:
        out = llm.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0].token_ids
    model = load_model(tmp_path / "run", tiny_corpus.vocab_size)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # greedy by hand, from the training code's forward
            ids.append(int(model.logits(model.causal_forward(torch.tensor([ids])))[0, -1].argmax()))
    assert out == ids[len(prompt):]

    stats = generate_synthetic(tmp_path / "hf", tiny_corpus, RUN.tokens, 6, 8, RUN.seq_len, 0,
                               tmp_path / "synth.u16")
    samples = np.fromfile(tmp_path / "synth.u16", dtype=np.uint16).reshape(6, RUN.seq_len + 1)
    assert stats == {**stats, "samples": 6, "tokens": 6 * 65}
    prompts = prompts_from(tiny_corpus.budget(RUN.tokens), 6, 8, 0)
    assert [s[:8].tolist() for s in samples] == prompts  # each sample continues a window of the student's data
