"""The engines people would use instead, run on the same weights, dtype and token ids as ours.

* ``hf``: transformers ``generate`` (AR) on the target directory.
* ``hf-assisted``: transformers assisted generation with our shipped draft as ``assistant_model``. The draft is
  not a stock architecture (a few Llama layers on the target's embedding, a head over a vocabulary subset), so
  ``hf_draft`` builds a stock ``LlamaForCausalLM`` whose head is swapped for one that computes exactly our draft's
  logits (-inf outside the subset). K draft tokens per round, constant schedule, no confidence early stop.
* ``llamacpp``: llama.cpp through llama-cpp-python, in a worker process started with the interpreter named by
  ``$PAPERCLUB_LLAMACPP_PYTHON`` (llama-cpp-python is not a dependency of paperclub), on a BF16 GGUF of the
  target written here from the same weights (``models/gguf_write.py``). Batch 1 only.

Every peer ignores EOS (runs exactly N new tokens), as our modes do with ``ignore_eos``: transformers gets no
EOS id (``min_new_tokens`` would instead mask EOS and change the greedy tokens), llama.cpp's raw token
generator never stops by itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paperclub.errors import UserError
from paperclub.models.draft import full_vocab_logits
from paperclub.models.gguf_write import bf16_gguf_for

log = logging.getLogger(__name__)

PEERS = ("hf", "hf-assisted", "llamacpp")
LLAMACPP_ENV = "PAPERCLUB_LLAMACPP_PYTHON"


@dataclass
class Run:
    """What one pass over the prompts produced: token ids per prompt, wall time, speculation counters."""

    outputs: list[list[int]]
    wall_s: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(o) for o in self.outputs)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise UserError("the hf peers need transformers: pip install 'paperclub[bench]'") from e
    transformers.logging.set_verbosity_error()
    return transformers


# -- transformers ------------------------------------------------------------------------------------------


class SubsetHead(nn.Module):
    """Our draft's head: logits over `vocab_ids` only, scattered into the full vocabulary, -inf elsewhere."""

    def __init__(self, weight: torch.Tensor, vocab_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("vocab_ids", vocab_ids.long(), persistent=False)
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return full_vocab_logits(nn.functional.linear(hidden, self.weight), self.vocab_ids, self.vocab_size)


def hf_draft(draft_dir: str | Path, embed_weight: torch.Tensor, dtype: torch.dtype):
    """Our paperclub draft as a transformers `LlamaForCausalLM` (layers and norm loaded as is, the target's
    embedding, `SubsetHead` as lm_head), usable as `assistant_model`."""
    from safetensors.torch import load_file

    from paperclub.models.draft import DRAFT_KEY, VOCAB_IDS

    transformers = _transformers()
    draft_dir = Path(draft_dir)
    hf = json.loads((draft_dir / "config.json").read_text())
    hf.pop(DRAFT_KEY, None)
    hf["tie_word_embeddings"] = False
    cfg = transformers.LlamaConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")})
    tensors = load_file(str(draft_dir / "model.safetensors"))
    vocab_ids = tensors.pop(VOCAB_IDS)
    head = tensors.pop("lm_head.weight")
    model = transformers.LlamaForCausalLM(cfg)
    model.lm_head = SubsetHead(torch.empty(head.shape), vocab_ids, cfg.vocab_size)
    tensors["model.embed_tokens.weight"] = embed_weight.detach().cpu()
    tensors["lm_head.weight"] = head
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(f"{draft_dir}: draft tensors do not fit a Llama layout (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}): use a draft made by `paperclub distill`")
    return model.to(dtype).eval().requires_grad_(False)


def _left_pad(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    return ids, mask


class HFPeer:
    """transformers `generate`, optionally with an assistant (assisted generation, batch 1 only)."""

    def __init__(self, name: str, model, assistant=None, k: int = 4, pad_id: int = 0):
        self.name, self.model, self.assistant, self.pad_id = name, model, assistant, pad_id
        model.generation_config.eos_token_id = None  # run exactly N tokens, as our ignore_eos does
        if assistant is not None:
            gc = assistant.generation_config
            gc.eos_token_id = None
            gc.num_assistant_tokens = k
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0  # no early stop: always K draft tokens, like our SD

    def unsupported(self, batch_size: int) -> str | None:
        if self.assistant is not None and batch_size > 1:
            return "transformers assisted generation supports batch size 1 only"
        return None

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], batch_size: int, n: int, temperature: float, seed: int) -> Run:
        outputs: list[list[int]] = []
        wall = 0.0
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            ids, mask = _left_pad(batch, self.pad_id)
            kwargs: dict[str, Any] = dict(max_new_tokens=n, pad_token_id=self.pad_id, do_sample=temperature > 0)
            if temperature > 0:
                kwargs |= dict(temperature=temperature, top_k=0, top_p=1.0)
            if self.assistant is not None:
                kwargs["assistant_model"] = self.assistant
            torch.manual_seed(seed + start)
            t0 = time.perf_counter()
            out = self.model.generate(ids, attention_mask=mask, **kwargs)
            wall += time.perf_counter() - t0
            outputs += out[:, ids.shape[1]:].tolist()
        return Run(outputs, wall)

    def close(self) -> None:
        pass


def load_hf_target(target_dir: str | Path, dtype: torch.dtype):
    transformers = _transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=dtype).eval()


# -- llama.cpp ---------------------------------------------------------------------------------------------

def llamacpp_python() -> str:
    """The interpreter with llama-cpp-python, from $PAPERCLUB_LLAMACPP_PYTHON; a UserError saying how to get one."""
    python = os.environ.get(LLAMACPP_ENV)
    if not python:
        raise UserError(f"the llamacpp peer needs ${LLAMACPP_ENV}: the python of a venv with llama-cpp-python "
                        "(python3.11 -m venv /tmp/llamacpp-venv && /tmp/llamacpp-venv/bin/pip install "
                        f"llama-cpp-python==0.3.36, then {LLAMACPP_ENV}=/tmp/llamacpp-venv/bin/python)")
    if not Path(python).is_file():
        raise UserError(f"${LLAMACPP_ENV}={python} does not exist: point it at a python with llama-cpp-python")
    return python


def check_peers(names: list[str]) -> None:
    """Fail early, before any model loads, on what a peer is sure to lack."""
    if "llamacpp" in names:
        llamacpp_python()
    if {"hf", "hf-assisted"} & set(names):
        _transformers()


class LlamaCppPeer:
    """llama.cpp in a worker process (JSON lines over stdin/stdout); times are measured inside the worker."""

    name = "llamacpp"

    def __init__(self, target_dir: Path, threads: int):
        python = llamacpp_python()
        self.gguf = bf16_gguf_for(target_dir)
        worker = Path(__file__).with_name("bench_llamacpp_worker.py")
        self.proc = subprocess.Popen([python, str(worker), str(self.gguf), str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._recv()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise UserError(f"the llama.cpp worker died (exit code {self.proc.wait()}); see its messages above")
        msg = json.loads(line)
        if "error" in msg:
            raise UserError(f"llama.cpp worker: {msg['error']}")
        return msg

    def unsupported(self, batch_size: int) -> str | None:
        if batch_size > 1:
            return "llama-cpp-python's high-level API decodes one sequence at a time: batch 1 only"
        return None

    def run(self, prompts: list[list[int]], batch_size: int, n: int, temperature: float, seed: int) -> Run:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "n": n, "temperature": temperature, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        msg = self._recv()
        return Run(msg["outputs"], msg["wall_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_peers(names: list[str], target_dir: Path, draft_dir: Path | None, dtype: torch.dtype, k: int,
               pad_id: int) -> list:
    peers: list = []
    hf = None
    for name in names:
        if name in ("hf", "hf-assisted") and hf is None:
            hf = load_hf_target(target_dir, dtype)
        if name == "hf":
            peers.append(HFPeer("hf", hf, pad_id=pad_id))
        elif name == "hf-assisted":
            if draft_dir is None:
                raise UserError("hf-assisted needs a draft model: pass --draft DIR")
            assistant = hf_draft(draft_dir, hf.get_input_embeddings().weight, dtype)
            peers.append(HFPeer("hf-assisted", hf, assistant, k=k, pad_id=pad_id))
        elif name == "llamacpp":
            peers.append(LlamaCppPeer(target_dir, torch.get_num_threads()))
    return peers


if __name__ == "__main__":  # pragma: no cover - a manual check: write and verify the BF16 GGUF
    from paperclub.models.default_model import ensure_default_model

    print(bf16_gguf_for(ensure_default_model()), file=sys.stderr)
