"""Shared pieces of the CUDA benchmarks: real-shaped randomly initialised models, an engine run, a read-bandwidth
probe. Random weights stand in for checkpoints the GPU machine cannot download; speed does not depend on values."""

from __future__ import annotations

import statistics
import time

import torch

from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama
from paperclub.models.loader import load_hf_weights

# meta-llama/Meta-Llama-3-8B's config.json, shapes only
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)


def hf_random_llama(layers: int, seed: int, dtype=torch.bfloat16, device="cuda"):
    """A transformers LlamaForCausalLM of Llama-3-8B's shape (with `layers` blocks), random weights, eval mode."""
    import transformers

    cfg = transformers.LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.to(dtype).eval()


def ours_from_hf(hf, max_positions: int = 4096) -> Llama:
    """Our Llama with the same weights as the transformers model (copied, on the same device and dtype)."""
    p = next(hf.parameters())
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    with torch.device("meta"):
        model = Llama(cfg)
    model = model.to_empty(device=p.device).to(p.dtype)
    load_hf_weights(model, hf.state_dict().items())
    model.set_rope(max_positions)
    return model.eval()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def engine_run(decoder, prompts: list[list[int]], max_tokens: int, batch: int) -> tuple[float, list]:
    """Wall seconds (prefill included, synchronised) and the finished sequences of `prompts`, each run to exactly
    `max_tokens` new tokens."""
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=batch))
    sync()
    t0 = time.perf_counter()
    seqs = [engine.add_request(p, SamplingParams(max_tokens=max_tokens, ignore_eos=True)) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    sync()
    return time.perf_counter() - t0, seqs


def read_bandwidth_gpu(nbytes: int = 4 << 30, repeats: int = 10, device: str = "cuda") -> float:
    """Bytes/s of a `sum` over a bf16 buffer of `nbytes` (a read-only sweep, as decode weight reads are)."""
    x = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
    x.sum()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        x.sum()
        sync()
        times.append(time.perf_counter() - t)
    del x
    return nbytes / statistics.median(times)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def machine() -> dict:
    if not torch.cuda.is_available():
        return {"gpu": None, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda}
