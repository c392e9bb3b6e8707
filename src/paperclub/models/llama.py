"""The Llama-family decoder, written for a runtime that owns the KV cache.

One forward takes a (B, T) block of tokens, their rope positions and where each token's K/V goes in the
cache; attention reads the first S cache entries of each row's slot under a (B, T, S) boolean mask. The same
call therefore serves prefill (ragged prompts padded to T), decode (T = 1), verification (T = K + 1) and
branch decoding (tokens of many branches appended after a shared prefix, with a tree mask and per-branch
positions). The model never decides what is in the cache: the runtime (`paperclub.engine.kv_cache`) does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paperclub.models.config import ModelConfig
from paperclub.nn.cpu_kernels import cpu_kernel, usable
from paperclub.nn.linear import linear, packed
from paperclub.nn.rmsnorm import RMSNorm
from paperclub.nn.rope import apply_rope, rope_table


@dataclass
class AttentionMeta:
    """Where a forward's tokens live in the cache and what they may attend to."""

    slots: torch.Tensor  # (B,) cache slot of each row
    write_index: torch.Tensor  # (B, T) cache index each token's K/V is written to
    kv_len: int  # S: attention reads cache entries [0, S) of each slot
    mask: torch.Tensor | None  # (B, 1, T, S) bool, True = may attend; None = attend to all S
    slot_range: tuple[int, int] | None = None  # rows are slots [a, b): read the cache as a view, no gather
    lengths: list[int] | None = None  # real tokens per row when rows are padded to T (a ragged prefill), else None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def project(self, x, cos, sin):
        """q, k, v of shape (B, T, heads, hd), with q/k norm and rope applied."""
        cfg = self.cfg
        B, T, _ = x.shape
        q, k, v = linear(x, self.qkv.weight, self.qkv.bias).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(B, T, cfg.num_heads, cfg.head_dim)
        k = k.view(B, T, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(B, T, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def causal(self, x, cos, sin):
        """Attention over the block itself, causally, with no cache: training and scoring whole sequences."""
        cfg = self.cfg
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.project(x, cos, sin))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=cfg.num_heads != cfg.num_kv_heads)
        return linear(out.transpose(1, 2).reshape(B, T, cfg.q_size), self.o.weight, self.o.bias)

    def forward(self, x, cos, sin, k_cache, v_cache, meta: AttentionMeta):
        cfg = self.cfg
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)  # (B, T, H, hd)

        rows = meta.slots[:, None].expand(B, T)
        k_cache[rows, :, meta.write_index] = k
        v_cache[rows, :, meta.write_index] = v
        if q.shape[-1] % 16 == 0 and q.shape[-1] <= 256 and usable(q, k_cache):  # batch-invariant, slots in place
            mask = None if meta.mask is None else meta.mask.view(B, T, meta.kv_len)
            out = cpu_kernel().attention(q.contiguous(), k_cache, v_cache, meta.slots, meta.kv_len, mask,
                                         cfg.head_dim**-0.5)
            return linear(out.view(B, T, cfg.q_size), self.o.weight, self.o.bias)
        if meta.slot_range is not None:
            a, b = meta.slot_range
            keys, values = k_cache[a:b, :, : meta.kv_len], v_cache[a:b, :, : meta.kv_len]
        else:
            keys = k_cache.index_select(0, meta.slots)[:, :, : meta.kv_len]
            values = v_cache.index_select(0, meta.slots)[:, :, : meta.kv_len]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=meta.mask, enable_gqa=cfg.num_heads != cfg.num_kv_heads
        )  # (B, H, T, hd)
        return linear(out.transpose(1, 2).reshape(B, T, cfg.q_size), self.o.weight, self.o.bias)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = linear(x, self.gate_up.weight).split(self.hidden, dim=-1)
        return linear(F.silu(gate) * up, self.down.weight)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, k_cache, v_cache, meta):
        if self._fused(x, k_cache):  # the whole block in one compiled call (`nn/kernels/block_cpu.cpp`)
            return cpu_kernel().block(x.contiguous(), *self.tensors(), cos, sin, k_cache, v_cache, meta.slots,
                                      meta.write_index, meta.kv_len, meta.mask, self.attn.cfg.num_heads,
                                      self.attn_norm.eps)
        x = x + self.attn(self.attn_norm(x), cos, sin, k_cache, v_cache, meta)
        return x + self.mlp(self.mlp_norm(x))

    def causal(self, x, cos, sin):
        x = x + self.attn.causal(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))

    MATRICES = (1, 5, 8, 9)  # where `raw_tensors` has weight matrices

    def raw_tensors(self) -> list[torch.Tensor | None]:
        """The block's tensors in the order the fused kernel takes them."""
        a = self.attn
        return [self.attn_norm.weight, a.qkv.weight, a.qkv.bias, None if a.q_norm is None else a.q_norm.weight,
                None if a.k_norm is None else a.k_norm.weight, a.o.weight, a.o.bias, self.mlp_norm.weight,
                self.mlp.gate_up.weight, self.mlp.down.weight]

    def tensors(self) -> list[torch.Tensor | None]:
        """`raw_tensors` with the matrices in the layout the kernel reads (`packed`)."""
        return [packed(t) if i in self.MATRICES else t for i, t in enumerate(self.raw_tensors())]

    def _fused(self, x: torch.Tensor, k_cache: torch.Tensor) -> bool:
        w = self.attn.qkv.weight
        key = (x.dtype, x.device, k_cache.dtype, w.dtype, w.device, torch.is_grad_enabled() and w.requires_grad)
        if getattr(self, "_fused_key", None) != key:  # decided once per dtype/device/grad mode, not per call
            cfg, step = self.attn.cfg, 32 if x.dtype == torch.bfloat16 else 16
            shapes_ok = cfg.head_dim % 16 == 0 and cfg.head_dim <= 256 and all(
                n % step == 0 for n in (cfg.hidden_size, cfg.q_size, cfg.intermediate_size))
            self._fused_key = key
            self._fused_ok = shapes_ok and usable(x, k_cache, *self.parameters())
        return self._fused_ok


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.set_rope(max_positions)

    def set_rope(self, max_positions: int | None = None) -> None:
        """(Re)build the cos/sin table for positions [0, max_positions) on the weights' device."""
        cfg = self.cfg
        n = min(max_positions or cfg.max_position_embeddings, cfg.max_position_embeddings)
        device = self.embed.weight.device
        with torch.device("cpu"):  # computed on the CPU in float32 whatever the model's device
            cos, sin = rope_table(cfg.head_dim, cfg.rope_theta, n, cfg.rope_scaling)
        if device.type != "meta":
            cos, sin = cos.to(device), sin.to(device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(self, tokens, positions, k_caches, v_caches, meta: AttentionMeta) -> torch.Tensor:
        """tokens, positions: (B, T). Returns the final-normed hidden states (B, T, D)."""
        return self.forward_embeds(self.embed(tokens), positions, k_caches, v_caches, meta)

    def forward_embeds(self, x, positions, k_caches, v_caches, meta: AttentionMeta) -> torch.Tensor:
        """`forward` from the input vectors (B, T, D) instead of token ids (a draft head builds its own)."""
        fused = self.runs_fused(k_caches[0])
        if fused and meta.lengths is not None:
            return self._forward_packed(x, positions, k_caches, v_caches, meta)
        cos_table, sin_table = self.rope_tables(x.dtype)
        cos, sin = cos_table[positions][:, :, None], sin_table[positions][:, :, None]  # (B, T, 1, hd)
        if fused:
            return self._fused_layers(x, cos, sin, k_caches, v_caches, meta, meta.write_index)
        for layer, k_cache, v_cache in zip(self.layers, k_caches, v_caches, strict=True):
            x = layer(x, cos, sin, k_cache, v_cache, meta)
        return self.norm(x)

    def causal_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T), each row a sequence starting at position 0. Returns the final-normed hidden states
        (B, T, D) under causal attention, with no KV cache: the path for training and for scoring whole texts."""
        T = tokens.shape[1]
        window = self.cfg.sliding_window
        if window is not None and T > window:
            raise ValueError(f"causal_forward attends to the whole block: {T} tokens exceed the {window}-token window")
        x = self.embed(tokens)
        cos_table, sin_table = self.rope_tables(x.dtype)
        cos, sin = cos_table[:T][None, :, None], sin_table[:T][None, :, None]  # (1, T, 1, hd)
        for layer in self.layers:
            x = layer.causal(x, cos, sin)
        return self.norm(x)

    def rope_tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cos/sin tables in the activations' dtype. On the CPU the cast copies are kept (a decode step then
        indexes them directly); they are rebuilt when the float32 tables change (`set_rope`, `.to`)."""
        cos, sin = self.rope_cos, self.rope_sin
        if cos.dtype == dtype or cos.device.type != "cpu":
            return cos.to(dtype), sin.to(dtype)
        kept = self.__dict__.get("_rope_cast")
        if kept is None or kept[0] is not cos or kept[1].dtype != dtype:
            kept = (cos, cos.to(dtype), sin.to(dtype))
            self.__dict__["_rope_cast"] = kept
        return kept[1], kept[2]

    def runs_fused(self, k_cache: torch.Tensor) -> bool:
        """Whether forwards run as one compiled call (`nn/kernels/block_cpu.cpp`), which also takes ragged rows."""
        return len(self.layers) > 0 and self.layers[0]._fused(self.embed.weight, k_cache)

    def _fused_layers(self, x, cos, sin, k_caches, v_caches, meta: AttentionMeta, write_index, cu_seqlens=None):
        """Every block, then the final norm, in one compiled call."""
        w = self.norm.weight
        in_kernel = w.dtype == x.dtype and self.norm.eps == self.cfg.rms_norm_eps
        out = cpu_kernel().layers(x.contiguous(), self._block_params(), list(k_caches), list(v_caches), cos, sin,
                                  meta.slots, write_index, meta.kv_len, meta.mask, self.cfg.num_heads,
                                  self.cfg.rms_norm_eps, cu_seqlens, w if in_kernel else None)
        return out if in_kernel else self.norm(out)

    def _forward_packed(self, x, positions, k_caches, v_caches, meta: AttentionMeta) -> torch.Tensor:
        """`forward_embeds` for rows padded to T with only `meta.lengths[b]` real tokens each (a batched prefill):
        the real rows are packed one after another and the padding is never computed. Padding positions of the
        result are 0."""
        B, T = x.shape[:2]
        lengths = torch.tensor(meta.lengths, device=x.device)
        real = (torch.arange(T, device=x.device)[None, :] < lengths[:, None]).view(-1)  # (B*T,) row-major
        cu = torch.tensor([0, *itertools.accumulate(meta.lengths)])
        x = x.reshape(B * T, -1)[real]  # (N, D)
        pos = positions.reshape(-1)[real]
        cos_table, sin_table = self.rope_tables(x.dtype)
        cos, sin = cos_table[pos], sin_table[pos]
        x = self._fused_layers(x, cos, sin, k_caches, v_caches, meta, meta.write_index.reshape(-1)[real], cu)
        out = x.new_zeros(B * T, x.shape[-1])
        out[real] = x
        return out.view(B, T, -1)

    def _block_params(self) -> list[torch.Tensor | None]:
        """Every block's tensors in the order `layers` (`nn/kernels/block_cpu.cpp`) takes them. The Parameter
        objects are gathered once per dtype/device (they stay the same when weights are loaded with `copy_` or
        converted with `.to`); their packed copies are looked up per call, so a changed weight is packed again."""
        key = self.layers[0]._fused_key
        if getattr(self, "_block_params_key", None) != key:
            self._block_raw = [t for layer in self.layers for t in layer.raw_tensors()]
            per_layer = len(self._block_raw) // len(self.layers)
            self._block_matrices = [i for i in range(len(self._block_raw)) if i % per_layer in Block.MATRICES]
            self._block_params_key = key
        params = list(self._block_raw)
        for i in self._block_matrices:
            params[i] = packed(params[i])
        return params

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits for the given hidden states (..., D)."""
        return linear(hidden, self.lm_head.weight).float()
