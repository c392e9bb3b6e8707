"""Minimal self-contained bf16 Llama decode step (SmolLM2-135M shape, random weights) on CPU: eager vs
torch.compile variants, batch 1/16, context ~100/~600, K+1=6-token verify step, HF generate() reference.

Model layout (what the engine should copy):
  * fused weights per layer: wqkv [960, 576], wo [576, 576], wgu [3072, 576] (gate rows first),
    wd [576, 1536]; tied embedding [49152, 576] used as LM head; all bf16; RMSNorm weights bf16 (F.rms_norm).
  * static KV cache: per-layer lists k_caches / v_caches of [B, n_kv, S_max=1024, 64] bf16 tensors, passed as
    *inputs* and written in place with index_copy_(2, pos, k) at positions pos [T] (int64 tensor => no
    recompile when pos changes; all rows of the batch share positions). PITFALL (measured, see
    kv_write_pitfall()): scatter_ into a view k_cache[i] of one big [L, ...] cache makes inductor copy the
    whole cache every layer (~41 ms/step extra); scatter_ on per-layer tensors ~3.4 ms; index_copy_ ~0.05 ms.
  * attention always runs over a view of fixed length `kv_view` (default: the whole S_max) with a boolean
    mask kv_idx <= pos built inside the graph => graph shapes never change from step to step.
    GQA without repeating K/V: q [B, 9, T, 64] -> [B, 3, 3*T, 64] so each KV head serves its 3 q heads.
  * RoPE: cos/sin tables [S_max, 64] precomputed, gathered with pos.

Variants (--variants):
  eager          F.linear, kv view = exactly the used length (no mask padding cost)
  eager_packed   like eager, linears via torch.ops.mkldnn._linear_pointwise on prepacked weights
  c_default      torch.compile(fullgraph=True, dynamic=False), freezing off
  c_freeze       same + torch._inductor.config.freezing = True
  c_maxat        mode="max-autotune-no-cudagraphs" + freezing (inductor C++ GEMM template, AMX micro-kernel)
  c_maxat_nofrz  mode="max-autotune-no-cudagraphs", freezing off
Compiled variants use kv_view = S_max (fixed) unless --bucket N: then kv_view = round_up(ctx + T, N)
(one graph per bucket).

Usage: python benchmarks/decode_step.py --variants eager c_maxat --batch 1 16 --ctx 100 600 --tokens 1 6
       python benchmarks/decode_step.py --generate c_maxat --hf      # tokens/s vs HF generate()
       python benchmarks/decode_step.py --profile                    # torch.profiler on the eager step
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_interleaved  # noqa: E402


@dataclass
class Cfg:
    n_layers: int = 30
    hidden: int = 576
    n_heads: int = 9
    n_kv: int = 3
    head_dim: int = 64
    inter: int = 1536
    vocab: int = 49152
    theta: float = 1e5
    eps: float = 1e-5
    s_max: int = 1024


def rope_tables(c: Cfg) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (c.theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    f = torch.outer(torch.arange(c.s_max, dtype=torch.float32), inv)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


def rot_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Llama(nn.Module):
    def __init__(self, c: Cfg, packed: bool = False, seed: int = 0):
        super().__init__()
        self.c = c
        g = torch.Generator().manual_seed(seed)
        bf = torch.bfloat16

        def p(*shape, scale=0.02):
            return nn.Parameter((torch.randn(*shape, generator=g) * scale).to(bf), requires_grad=False)

        qkv = (c.n_heads + 2 * c.n_kv) * c.head_dim
        self.embed = p(c.vocab, c.hidden)
        self.norm = nn.Parameter(torch.ones(c.hidden, dtype=bf), requires_grad=False)
        ones = lambda: nn.Parameter(torch.ones(c.hidden, dtype=bf), requires_grad=False)
        self.ln1 = nn.ParameterList([ones() for _ in range(c.n_layers)])
        self.ln2 = nn.ParameterList([ones() for _ in range(c.n_layers)])
        self.wqkv = nn.ParameterList([p(qkv, c.hidden) for _ in range(c.n_layers)])
        self.wo = nn.ParameterList([p(c.hidden, c.n_heads * c.head_dim) for _ in range(c.n_layers)])
        self.wgu = nn.ParameterList([p(2 * c.inter, c.hidden) for _ in range(c.n_layers)])
        self.wd = nn.ParameterList([p(c.hidden, c.inter) for _ in range(c.n_layers)])
        cos, sin = rope_tables(c)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.packed = packed
        self.pk: dict[int, torch.Tensor] = {}

    def prepack(self, batch_rows: int) -> None:
        """Eager fast path: oneDNN-blocked copies of every weight (extra memory; engine drops originals)."""
        self.packed = True
        rw = torch.ops.mkldnn._reorder_linear_weight
        allw = [self.embed, *self.wqkv, *self.wo, *self.wgu, *self.wd]
        self.pk = {id(w): rw(w.data, batch_rows) for w in allw}

    def lin(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.packed:
            shp = x.shape
            x2 = x.reshape(-1, shp[-1])
            y = torch.ops.mkldnn._linear_pointwise(x2, self.pk[id(w)], None, "none", [], "")
            return y.view(*shp[:-1], y.shape[-1])
        return F.linear(x, w)

    def forward(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        kv_view: int,
    ) -> torch.Tensor:
        """tokens [B, T], pos [T] int64; caches: L x [B, n_kv, S_max, hd] (mutated); logits [B, T, V]."""
        c = self.c
        b, t = tokens.shape
        grp = c.n_heads // c.n_kv
        x = F.embedding(tokens, self.embed)
        cos = self.cos[pos]  # [T, hd]
        sin = self.sin[pos]
        kv_idx = torch.arange(kv_view, device=tokens.device)
        allowed = kv_idx.view(1, kv_view) <= pos.unsqueeze(-1)  # [T, S]
        mask = allowed.repeat(grp, 1)  # [grp*T, S]: row g*T + t
        nq, nk = c.n_heads * c.head_dim, c.n_kv * c.head_dim
        for i in range(c.n_layers):
            h = F.rms_norm(x, (c.hidden,), self.ln1[i], c.eps)
            qkv = self.lin(h, self.wqkv[i])
            q, k, v = qkv.split([nq, nk, nk], dim=-1)
            q = q.view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
            k = k.view(b, t, c.n_kv, c.head_dim).transpose(1, 2)
            v = v.view(b, t, c.n_kv, c.head_dim).transpose(1, 2)
            q = q * cos + rot_half(q) * sin
            k = k * cos + rot_half(k) * sin
            k_cache[i].index_copy_(2, pos, k)
            v_cache[i].index_copy_(2, pos, v)
            kk = k_cache[i][:, :, :kv_view]
            vv = v_cache[i][:, :, :kv_view]
            qg = q.reshape(b, c.n_kv, grp * t, c.head_dim)  # heads grouped by their KV head
            o = F.scaled_dot_product_attention(qg, kk, vv, attn_mask=mask)
            o = o.view(b, c.n_heads, t, c.head_dim).transpose(1, 2).reshape(b, t, nq)
            x = x + self.lin(o, self.wo[i])
            h = F.rms_norm(x, (c.hidden,), self.ln2[i], c.eps)
            gu = self.lin(h, self.wgu[i])
            gt, up = gu.chunk(2, dim=-1)
            x = x + self.lin(F.silu(gt) * up, self.wd[i])
        x = F.rms_norm(x, (c.hidden,), self.norm, c.eps)
        return self.lin(x, self.embed)


def new_cache(c: Cfg, b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    shp = (b, c.n_kv, c.s_max, c.head_dim)
    z = lambda: [torch.zeros(shp, dtype=torch.bfloat16) for _ in range(c.n_layers)]
    return z(), z()


def kv_write_pitfall(threads: int) -> None:
    """Compiled cost of writing one token's K into 30 layer caches, three ways."""
    n_l, shp = 30, (1, 3, 1024, 64)

    def f_view(kc, idx, p, v):
        for i in range(n_l):
            kc[i].scatter_(2, idx, v)

    def f_list(kcs, idx, p, v):
        for i in range(n_l):
            kcs[i].scatter_(2, idx, v)

    def f_icopy(kcs, idx, p, v):
        for i in range(n_l):
            kcs[i].index_copy_(2, p, v)

    big = torch.zeros(n_l, *shp, dtype=torch.bfloat16)
    lst = [torch.zeros(shp, dtype=torch.bfloat16) for _ in range(n_l)]
    v = torch.randn(1, 3, 1, 64, dtype=torch.bfloat16)
    idx, p = torch.full((1, 3, 1, 64), 100), torch.tensor([100])
    fns = {}
    for name, f, kc in [("scatter_ view of [L,...]", f_view, big), ("scatter_ per-layer", f_list, lst),
                        ("index_copy_ per-layer", f_icopy, lst)]:  # fmt: skip
        cf = torch.compile(f, fullgraph=True, dynamic=False)
        fns[name] = (lambda g, a: lambda: g(a, idx, p, v))(cf, kc)
    res = bench_interleaved(fns, reps=7, target_s=0.05)
    for k, sec in res.items():
        print(f"threads={threads} KV write x30 layers, compiled: {k:26s} {sec * 1e3:8.3f} ms")


def make_compiled(model: Llama, mode: str | None, freezing: bool):
    import torch._inductor.config as icfg

    icfg.freezing = freezing
    return torch.compile(model, fullgraph=True, dynamic=False, mode=mode)


COMPILE_CFG = {
    "c_default": (None, False),
    "c_freeze": (None, True),
    "c_maxat": ("max-autotune-no-cudagraphs", True),
    "c_maxat_nofrz": ("max-autotune-no-cudagraphs", False),
}


def kv_view_for(variant: str, ctx: int, t: int, c: Cfg, bucket: int) -> int:
    if variant.startswith("eager"):
        return ctx + t
    if bucket:
        return min(c.s_max, -(-(ctx + t) // bucket) * bucket)
    return c.s_max


def bench_steps(args, c: Cfg) -> None:
    import torch._dynamo
    import torch._inductor.config as icfg
    from torch._dynamo.utils import counters

    torch._dynamo.config.cache_size_limit = 64
    for b in args.batch:
        for t in args.tokens:
            fns, labels, ctimes = {}, {}, {}
            for variant in args.variants:
                model = Llama(c).eval()
                if variant == "eager_packed":
                    model.prepack(b * t)
                if variant.startswith("c_"):
                    mode, frz = COMPILE_CFG[variant]
                    torch._dynamo.reset()
                    fn = make_compiled(model, mode, frz)
                else:
                    fn, frz = model, False
                kc, vc = new_cache(c, b)
                for ctx in args.ctx:
                    tok = torch.randint(0, c.vocab, (b, t))
                    pos = ctx + torch.arange(t)
                    kvv = kv_view_for(variant, ctx, t, c, args.bucket)
                    mk = lambda f, a, p, kc_, vc_, n: lambda: f(a, p, kc_, vc_, n)
                    call = mk(fn, tok, pos, kc, vc, kvv)
                    if variant.startswith("c_"):
                        icfg.freezing = frz
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            call()
                        ctimes[(variant, ctx)] = time.perf_counter() - t0
                        icfg.freezing = False
                    key = f"{variant}|ctx={ctx}"
                    fns[key] = call
                    labels[key] = (variant, ctx, kvv)
            recompiles_before = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
            with torch.no_grad():
                res = bench_interleaved(fns, reps=args.reps, target_s=0.15)
            recompiles = (
                sum(counters["recompiles"].values()) - recompiles_before if "recompiles" in counters else 0
            )
            base = {ctx: res.get(f"eager|ctx={ctx}") for ctx in args.ctx}
            for key, sec in res.items():
                variant, ctx, kvv = labels[key]
                ct = ctimes.get((variant, ctx))
                ct_s = f" compile(first call) {ct:6.1f}s" if ct is not None and ct > 1 else ""
                rel = f" x{base[ctx] / sec:4.2f} vs eager" if base[ctx] else ""
                print(
                    f"threads={torch.get_num_threads()} B={b:2d} T={t} ctx={ctx:4d} kv_view={kvv:4d} "
                    f"{variant:14s} {sec * 1e3:8.2f} ms/step  {b * t / sec:8.1f} tok/s{rel}{ct_s}",
                    flush=True,
                )
            print(f"  recompiles during timing: {recompiles}", flush=True)


def generate_loop(fn, c: Cfg, n_new: int, prompt_len: int, b: int = 1) -> float:
    """Greedy generation with the step function; returns tokens/s over the n_new decode steps (prefill via
    the same T=1 step, not timed)."""
    kc, vc = new_cache(c, b)
    tok = torch.randint(0, c.vocab, (b, 1))
    with torch.no_grad():
        for p in range(prompt_len):
            fn(tok, torch.tensor([p]), kc, vc, c.s_max)
        t0 = time.perf_counter()
        for i in range(n_new):
            logits = fn(tok, torch.tensor([prompt_len + i]), kc, vc, c.s_max)
            tok = logits[:, -1].argmax(-1, keepdim=True)
        return n_new / (time.perf_counter() - t0)


def hf_generate_tps(c: Cfg, n_new: int, prompt_len: int) -> tuple[float, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(
        vocab_size=c.vocab,
        hidden_size=c.hidden,
        intermediate_size=c.inter,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv,
        head_dim=c.head_dim,
        rope_theta=c.theta,
        rms_norm_eps=c.eps,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    m = LlamaForCausalLM(hc).to(torch.bfloat16).eval()
    ids = torch.randint(0, c.vocab, (1, prompt_len))
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        m.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        t0 = time.perf_counter()
        out = m.generate(ids, **kw)
        dt = time.perf_counter() - t0
    assert out.shape[1] == prompt_len + n_new
    # prefill of the prompt is included in dt: also report it separately
    with torch.no_grad():
        t0 = time.perf_counter()
        m(ids)
        pre = time.perf_counter() - t0
    return n_new / dt, n_new / max(dt - pre, 1e-9)


def run_generate(args, c: Cfg) -> None:
    import torch._dynamo
    import torch._inductor.config as icfg

    results: dict[str, list[float]] = {}
    fns = {}
    for variant in args.generate:
        model = Llama(c).eval()
        if variant == "eager_packed":
            model.prepack(1)
        if variant.startswith("c_"):
            mode, frz = COMPILE_CFG[variant]
            torch._dynamo.reset()
            fn = make_compiled(model, mode, frz)
            t0 = time.perf_counter()
            kc, vc = new_cache(c, 1)
            with torch.no_grad():
                fn(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), kc, vc, c.s_max)
            icfg.freezing = False
            print(f"{variant}: compile {time.perf_counter() - t0:.1f}s", flush=True)
        else:
            fn = model
        fns[variant] = fn
    for _ in range(args.gen_reps):
        for variant, fn in fns.items():
            results.setdefault(variant, []).append(generate_loop(fn, c, args.new_tokens, args.prompt))
        if args.hf:
            tps, tps_dec = hf_generate_tps(c, args.new_tokens, args.prompt)
            results.setdefault("hf_generate", []).append(tps)
            results.setdefault("hf_generate(excl. prefill)", []).append(tps_dec)
    hf = statistics.median(results["hf_generate"]) if args.hf else None
    for k, v in results.items():
        med = statistics.median(v)
        rel = f"  x{med / hf:4.2f} vs HF generate" if hf else ""
        runs = [round(x, 1) for x in v]
        print(
            f"threads={torch.get_num_threads()} generate {args.new_tokens} tok B=1 prompt={args.prompt} "
            f"{k:28s} median {med:7.1f} tok/s ({1e3 / med:6.2f} ms/tok) runs={runs}{rel}"
        )


def run_profile(c: Cfg) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = Llama(c).eval()
    kc, vc = new_cache(c, 1)
    tok = torch.randint(0, c.vocab, (1, 1))
    pos = torch.tensor([100])
    with torch.no_grad():
        for _ in range(3):
            model(tok, pos, kc, vc, 101)
        t0 = time.perf_counter()
        n = 10
        for _ in range(n):
            model(tok, pos, kc, vc, 101)
        wall = (time.perf_counter() - t0) / n
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                model(tok, pos, kc, vc, 101)
    ev = prof.key_averages()
    print(f"eager step wall {wall * 1e3:.2f} ms (unprofiled)")
    print(ev.table(sort_by="self_cpu_time_total", row_limit=15))
    n_ops = sum(e.count for e in ev if e.key.startswith("aten::")) / n
    print(f"aten op calls per step (incl. nested): {n_ops:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["eager", "eager_packed", "c_maxat"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1])
    ap.add_argument("--ctx", type=int, nargs="+", default=[100, 600])
    ap.add_argument("--bucket", type=int, default=0)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--generate", nargs="*", default=None)
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--gen-reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--kv-pitfall", action="store_true")
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = Cfg(n_layers=args.layers)
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}", flush=True)
    if args.kv_pitfall:
        kv_write_pitfall(args.threads)
    elif args.profile:
        run_profile(c)
    elif args.generate is not None:
        run_generate(args, c)
    else:
        bench_steps(args, c)


if __name__ == "__main__":
    main()
