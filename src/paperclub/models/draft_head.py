"""A feature draft head (EAGLE-style): a draft that reads the target's own last hidden states.

A draft LM (`draft.py`) sees only tokens and must rebuild, in a few layers, what the target computed in thirty.
The head instead drafts from the target's final hidden state h_i (the vector the target's output layer turns
into the distribution of token i + 1) and the token x_{i+1} that followed:

    z_i   = fc([h_i ; embed(x_{i+1})])             2D -> D, the target's frozen embedding
    g_i   = norm(block(z_i))                         one (or a few) Llama blocks with their own KV cache
    ĥ_{i+1} = g_i,   q(x_{i+2}) = softmax(head(g_i)) head over a reduced draft vocabulary

g_i is trained to be the target's next hidden state h_{i+1} (regression) and its logits to match the target's
next-token distribution (cross-entropy), so drafting K tokens feeds the head its own ĥ for the positions the
target has not verified yet; after verification the target's true h replace them. Its cost is one block plus a
small head: a fraction of a draft LM's.

Logits outside the draft vocabulary are -inf, so q is a proper distribution over the target's tokens and
verification stays exact, as for `DraftLM`.

A head directory holds `config.json` (the target's config with the head's depth and a `paperclub_draft` section
whose `kind` is "feature_head"), `model.safetensors` (the head's own tensors under their module names and
`draft.vocab_ids`; no embedding) and the target's tokenizer files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.draft import (
    DRAFT_KEY,
    TOKENIZER_FILES,
    VOCAB_IDS,
    DraftLM,
    _read_config,
    draft_config,
    empty_draft,
    read_draft_file,
)
from paperclub.models.llama import AttentionMeta, Llama
from paperclub.nn.linear import linear

HEAD_KIND = "feature_head"


class DraftHead(DraftLM):
    """A `DraftLM` (blocks, norm, reduced-vocabulary head over the target's embedding) whose input is not a token's
    embedding but fc([target hidden ; token embedding]); from there on it runs as a `Llama` (`forward_embeds`), on
    the engine's compiled CPU kernels."""

    def __init__(self, cfg: ModelConfig, embed: nn.Embedding, vocab_ids: torch.Tensor,
                 max_positions: int | None = None):
        super().__init__(cfg, embed, vocab_ids, max_positions)
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=True)

    def fuse(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """z = fc([h ; embed(x)]): features (B, T, D) of positions i, tokens (B, T) = x_{i+1}."""
        x = torch.cat([features.to(self.dtype), self.embed(tokens).to(self.dtype)], dim=-1)
        return linear(x, self.fc.weight, self.fc.bias)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                k_caches: list[torch.Tensor], v_caches: list[torch.Tensor], meta: AttentionMeta) -> torch.Tensor:
        """With a KV cache (drafting): the predicted next hidden states (B, T, D), normed."""
        return self.forward_embeds(self.fuse(features, tokens), positions, k_caches, v_caches, meta)

    def causal_forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Whole sequences from position 0, no cache (training): (B, T, D) predicted next hidden states. (Takes
        the pairs' features and tokens where `Llama.causal_forward` takes tokens.)"""
        T = tokens.shape[1]
        x = self.fuse(features, tokens)
        cos = self.rope_cos[:T].to(x.dtype)[None, :, None]
        sin = self.rope_sin[:T].to(x.dtype)[None, :, None]
        for layer in self.layers:
            x = layer.causal(x, cos, sin)
        return self.norm(x)

    def unrolled_forward(self, features: torch.Tensor, tokens: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """Training as the head drafts ("training-time test"): level 1 is `causal_forward` on the true features;
        level s feeds pair i the level s-1 prediction made at pair i-1 (the true token stays: only accepted drafts
        matter), and its query at i sees the true pairs up to i-s+1 plus the chain of levels 2..s that led to it
        (level l's pair at i-s+l), exactly the cache a drafting step s sees. Returns each level's (B, T, D) output;
        level s is meaningful from pair s-1 on."""
        outs = [self.causal_forward(features, tokens)] if levels == 1 else []
        if levels == 1:
            return outs
        B, T = tokens.shape
        cfg = self.cfg
        cos, sin = self.rope_cos[:T][None, :, None], self.rope_sin[:T][None, :, None]
        keys: list[list[torch.Tensor]] = [[] for _ in self.layers]
        values: list[list[torch.Tensor]] = [[] for _ in self.layers]
        feats = features
        i = torch.arange(T, device=tokens.device)[:, None]
        j = torch.arange(T, device=tokens.device)[None, :]
        for s in range(1, levels + 1):
            x = self.fuse(feats, tokens)
            c, sn = cos.to(x.dtype), sin.to(x.dtype)
            parts = [j <= i - s + 1] + [j == i - s + lvl for lvl in range(2, s + 1)]
            mask = torch.cat(parts, dim=1) if s > 1 else j <= i  # (T, s*T)
            for n, layer in enumerate(self.layers):
                q, k, v = layer.attn.project(layer.attn_norm(x), c, sn)
                keys[n].append(k)
                values[n].append(v)
                K, V = torch.cat(keys[n], 1), torch.cat(values[n], 1)
                out = F.scaled_dot_product_attention(q.transpose(1, 2), K.transpose(1, 2), V.transpose(1, 2),
                                                     attn_mask=mask, enable_gqa=cfg.num_heads != cfg.num_kv_heads)
                x = x + linear(out.transpose(1, 2).reshape(B, T, cfg.q_size), layer.attn.o.weight, layer.attn.o.bias)
                x = x + layer.mlp(layer.mlp_norm(x))
            g = self.norm(x)
            outs.append(g)
            feats = torch.cat([features[:, :1], g[:, :-1].to(features.dtype)], dim=1)  # pair i <- prediction at i-1
        return outs

    def own_state(self) -> dict[str, torch.Tensor]:
        """The head's tensors (the shared embedding is not among them)."""
        return {n: t for n, t in self.state_dict().items() if not n.startswith("embed.")}


def init_head(target: Llama, vocab_ids: torch.Tensor, num_layers: int = 1, init_layer: int | None = -1,
              seed: int = 0) -> DraftHead:
    """A head for `target`: blocks copied from target layer `init_layer` with their output projections (attention
    out, MLP down) zeroed, or random (None); fc mapping the hidden half to the identity and the embedding half to
    small noise, so the head starts by predicting h_{i+1} = h_i (a last layer copied whole sends its large
    outputs through and starts at a cross-entropy of 25 nats); final norm from the target; head rows = the
    target's output rows for `vocab_ids`."""
    tcfg = target.cfg
    if num_layers < 1:
        raise UserError(f"a draft head needs >= 1 layer, got {num_layers}")
    head = DraftHead(draft_config(tcfg, num_layers), target.embed, vocab_ids, target.rope_cos.shape[0])
    head.to(device=target.device, dtype=target.dtype)
    head.embed = target.embed
    D = tcfg.hidden_size
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in head.layers:
            if init_layer is None:
                for p in layer.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02 if p.dim() == 2 else torch.ones(p.shape))
            else:  # the target layer's attention and MLP, adding nothing to z until training moves them
                layer.load_state_dict(target.layers[init_layer].state_dict())
                layer.attn.o.weight.zero_()
                layer.mlp.down.weight.zero_()
        fc = torch.cat([torch.eye(D), torch.randn(D, D, generator=gen) * 0.02], dim=1)
        head.fc.weight.copy_(fc)
        head.fc.bias.zero_()
        head.norm.weight.copy_(target.norm.weight)
        head.lm_head.weight.copy_(target.lm_head.weight[vocab_ids.to(target.device)])
    return head


def head_loss(head: DraftHead, features: torch.Tensor, tokens: torch.Tensor, top_ids: torch.Tensor,
              top_p: torch.Tensor, weight: torch.Tensor, reg_weight: float,
              targets: torch.Tensor | None = None, levels: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
    """The head's training loss on whole sequences, averaged over `levels` (`DraftHead.unrolled_forward`).

    features (B, T, D): the target's hidden states h_0..h_{T-1}; tokens (B, T): x_0..x_{T-1}; top_ids/top_p
    (B, T, k): the target's top-k distribution of the next token at each position, over draft-vocab indices;
    weight (B, T): per-position weight (0 on padding). Pair i = (h_i, x_{i+1}), i = 0..T-2, predicts h_{i+1} and
    the distribution of x_{i+2} (row i + 1): cross-entropy + `reg_weight` x smooth-L1. `targets`: the clean states
    to regress on when `features` are noised (default: `features`). Returns the loss and, as floats, the
    cross-entropy and regression of level 1 and the cross-entropy of each level."""
    targets = features if targets is None else targets
    preds = head.unrolled_forward(features[:, :-1], tokens[:, 1:], levels)
    ids, p, goal = top_ids[:, 1:], top_p[:, 1:], targets[:, 1:].float()
    total = torch.zeros((), device=features.device)
    parts: dict[str, float] = {}
    for s, pred in enumerate(preds, 1):
        w = weight[:, 1:].clone()
        w[:, : s - 1] = 0  # level s starts at pair s-1
        norm = w.sum().clamp(min=1.0)
        logq = F.log_softmax(head.subset_logits(pred), dim=-1).gather(-1, ids)
        ce = (-(p * logq).sum(-1) * w).sum() / norm
        reg = (F.smooth_l1_loss(pred.float(), goal, reduction="none").mean(-1) * w).sum() / norm
        total = total + (ce + reg_weight * reg) / len(preds)
        parts[f"ce{s}"] = ce.item()
        if s == 1:
            parts["ce"], parts["reg"] = ce.item(), reg.item()
    return total, parts


# -- files ----------------------------------------------------------------------------------------------

def is_head_dir(model_dir: str | Path) -> bool:
    path = Path(model_dir) / "config.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get(DRAFT_KEY, {}).get("kind") == HEAD_KIND
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def save_head(head: DraftHead, out_dir: Path, target_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write `head` as a head directory (bf16 weights) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = _read_config(Path(target_dir))
    hf["num_hidden_layers"] = head.cfg.num_layers
    hf["torch_dtype"] = hf["dtype"] = "bfloat16"
    hf[DRAFT_KEY] = {"kind": HEAD_KIND, "draft_vocab_size": len(head.vocab_ids), "shared_embedding": True,
                     **(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    tensors = {n: t.detach().to("cpu", torch.bfloat16).contiguous() for n, t in head.own_state().items()}
    tensors[VOCAB_IDS] = head.vocab_ids.to("cpu", torch.int64).contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (Path(target_dir) / name).is_file():
            shutil.copyfile(Path(target_dir) / name, out_dir / name)


def load_head(head_dir: str | Path, target: Llama, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None) -> DraftHead:
    """Load a head directory for `target` (whose embedding it shares)."""
    head_dir = Path(head_dir)
    hf = _read_config(head_dir)
    if hf.get(DRAFT_KEY, {}).get("kind") != HEAD_KIND:
        raise UserError(f"{head_dir} is not a paperclub draft head (config.json {DRAFT_KEY}.kind != {HEAD_KIND!r})")
    cfg = ModelConfig.from_hf(hf)
    for name in ("vocab_size", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "rope_theta"):
        if getattr(cfg, name) != getattr(target.cfg, name):
            raise UserError(f"the draft head's {name} ({getattr(cfg, name)}) differs from the target's "
                            f"({getattr(target.cfg, name)}): use a head trained for this target")
    device = torch.device(device) if device is not None else target.device
    dtype = dtype or target.dtype
    path = head_dir / "model.safetensors"
    tensors, vocab_ids = read_draft_file(path, cfg.vocab_size)
    head = empty_draft(DraftHead, cfg, vocab_ids, target, device, dtype)
    expected = {n: tuple(t.shape) for n, t in head.own_state().items()}
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if expected != got:
        wrong = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise UserError(f"{path} does not match its config (e.g. {wrong}): re-create the draft head")
    with torch.no_grad():
        own = head.state_dict()
        for n, t in tensors.items():
            own[n].copy_(t.to(dtype))
    head.set_rope(target.rope_cos.shape[0])
    return head.eval().requires_grad_(False)


__all__ = ["DraftHead", "init_head", "head_loss", "save_head", "load_head", "is_head_dir", "HEAD_KIND"]
