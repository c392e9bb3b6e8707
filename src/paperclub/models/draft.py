"""Draft models for speculative decoding: a few Llama layers on the target's own embedding, with a reduced
output vocabulary mapped back to the target's ids.

A draft directory is a Hugging Face-style model directory:

- `config.json`: a Llama config with the draft's depth and the *target's* vocab_size, plus a
  `paperclub_draft` section (draft vocabulary size, whether the embedding is the target's);
- `model.safetensors`: the layers (`model.layers.N.*`), the final norm (`model.norm.weight`), the output head
  over the draft vocabulary (`lm_head.weight`, shape (draft_vocab, hidden)) and `draft.vocab_ids`, the target
  id of each head row; no embedding (it is taken from the target at load time, which keeps the file small);
- the target's tokenizer files.

`DraftLM` has the interface of `Llama` (forward, logits, cfg, device, dtype), so the engine runs it with the
same `ModelRunner`/KV cache code. `logits` returns float32 logits over the full target vocabulary, -inf outside
the draft vocabulary: softmax gives a proper distribution q over the target's tokens, zero outside the subset,
and the speculative acceptance rule stays exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.hf_export import layer_tensors
from paperclub.models.llama import Block, Llama
from paperclub.models.loader import load_hf_weights
from paperclub.nn.linear import linear
from paperclub.nn.rmsnorm import RMSNorm

log = logging.getLogger(__name__)

DRAFT_KEY = "paperclub_draft"
VOCAB_IDS = "draft.vocab_ids"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


@dataclass
class DraftSpec:
    """What makes a draft a draft: its output vocabulary and where its input embedding comes from."""

    draft_vocab_size: int
    shared_embedding: bool = True

    def __post_init__(self) -> None:
        if self.draft_vocab_size < 1:
            raise UserError(f"draft vocabulary size must be >= 1, got {self.draft_vocab_size}")


class DraftLM(Llama):
    """A `Llama` whose embedding is the target's and whose head covers `vocab_ids` only."""

    def __init__(self, cfg: ModelConfig, embed: nn.Embedding, vocab_ids: torch.Tensor,
                 max_positions: int | None = None):
        nn.Module.__init__(self)
        if embed.weight.shape != (cfg.vocab_size, cfg.hidden_size):
            raise UserError(
                f"the target's embedding is {tuple(embed.weight.shape)} but the draft expects "
                f"({cfg.vocab_size}, {cfg.hidden_size}): use a draft trained for this target"
            )
        self.cfg = cfg
        self.embed = embed
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, len(vocab_ids), bias=False)
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long), persistent=False)
        self.set_rope(max_positions)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def subset_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits over the draft vocabulary only (..., draft_vocab); training uses these. `linear`: the
        engine's CPU kernel at inference (torch's bf16 matmul is 3-4x slower on CPUs without BF16 instructions),
        torch's op under autograd."""
        return linear(hidden, self.lm_head.weight).float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits over the full target vocabulary: the subset's logits, -inf everywhere else."""
        return full_vocab_logits(self.subset_logits(hidden), self.vocab_ids, self.cfg.vocab_size)

    def draft_state(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The draft's own tensors under Hugging Face names (the shared embedding is not among them)."""
        own = {"model.norm.weight": self.norm.weight, "lm_head.weight": self.lm_head.weight}
        for i, layer in enumerate(self.layers):
            own |= dict(layer_tensors(layer, self.cfg, f"model.layers.{i}."))
        yield from own.items()


def full_vocab_logits(sub: torch.Tensor, vocab_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 logits (..., vocab_size) from logits over `vocab_ids` only: -inf (probability 0) everywhere else."""
    full = torch.full((*sub.shape[:-1], vocab_size), -math.inf, dtype=torch.float32, device=sub.device)
    return full.index_copy_(-1, vocab_ids, sub.float())


def draft_config(target_cfg: ModelConfig, num_layers: int) -> ModelConfig:
    """The target's config with the draft's depth (same vocab, width, rope and context)."""
    d = target_cfg.to_dict()
    d["num_layers"] = num_layers
    d["eos_token_ids"] = tuple(d["eos_token_ids"])
    return ModelConfig(**d)


def init_draft(target: Llama, num_layers: int, vocab_ids: torch.Tensor, init_layers: list[int] | None = None,
               random_init: bool = False, seed: int = 0) -> DraftLM:
    """A draft for `target`: `init_layers` (default: evenly spaced, first and last included) copied from the
    target, final norm from the target, head rows = the target's output rows for `vocab_ids`."""
    tcfg = target.cfg
    if not 1 <= num_layers <= tcfg.num_layers:
        raise UserError(f"--layers must be in [1, {tcfg.num_layers}] for this target, got {num_layers}")
    if init_layers is None:
        init_layers = [round(i * (tcfg.num_layers - 1) / max(num_layers - 1, 1)) for i in range(num_layers)]
    if len(init_layers) != num_layers or not all(0 <= i < tcfg.num_layers for i in init_layers):
        raise UserError(f"--init-layers must name {num_layers} target layers in [0, {tcfg.num_layers})")
    cfg = draft_config(tcfg, num_layers)
    draft = DraftLM(cfg, target.embed, vocab_ids, max_positions=target.rope_cos.shape[0])
    draft.to(device=target.device, dtype=target.dtype)
    draft.embed = target.embed  # `.to` may not rebind the shared module, make sure it is the target's own
    with torch.no_grad():
        if random_init:
            gen = torch.Generator().manual_seed(seed)
            for name, p in draft.named_parameters():
                if name.startswith("layers.") and p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        else:
            for mine, src in zip(draft.layers, init_layers, strict=True):
                mine.load_state_dict(target.layers[src].state_dict())
        draft.norm.weight.copy_(target.norm.weight)
        draft.lm_head.weight.copy_(target.lm_head.weight[vocab_ids.to(target.device)])
    return draft


def grow_draft(draft: DraftLM, target: Llama, num_layers: int, new_layers: list[int] | None = None) -> DraftLM:
    """`draft` deepened to `num_layers` blocks without changing what it computes.

    Each new block is a copy of a target layer (`new_layers`, default: evenly spaced inside the target, first and
    last excluded) inserted before the draft's last block, with its attention output and MLP down projections
    zeroed: the block adds nothing to the residual stream until training moves those two matrices (their
    gradients are not zero, since the block's inputs are), so a trained draft keeps its acceptance while it
    learns to use the extra depth."""
    old, tcfg = len(draft.layers), target.cfg
    extra = num_layers - old
    if extra < 0:
        raise UserError(f"--layers {num_layers} is shallower than the --init draft ({old} layers)")
    if new_layers is None:
        new_layers = [round((i + 1) * (tcfg.num_layers - 1) / (extra + 1)) for i in range(extra)]
    if len(new_layers) != extra or not all(0 <= i < tcfg.num_layers for i in new_layers):
        raise UserError(f"growing a {old}-layer draft to {num_layers} needs {extra} target layers in "
                        f"[0, {tcfg.num_layers}) for --init-layers, got {new_layers}")
    if extra == 0:
        return draft
    grown = DraftLM(draft_config(tcfg, num_layers), draft.embed, draft.vocab_ids, draft.rope_cos.shape[0])
    grown.to(device=draft.device, dtype=draft.dtype)
    grown.embed = draft.embed
    with torch.no_grad():
        blocks = list(draft.layers[:-1])
        for src in new_layers:
            block = Block(tcfg).to(device=draft.device, dtype=draft.dtype)
            block.load_state_dict(target.layers[src].state_dict())
            block.attn.o.weight.zero_()
            block.mlp.down.weight.zero_()
            if block.attn.o.bias is not None:
                block.attn.o.bias.zero_()
            blocks.append(block)
        blocks.append(draft.layers[-1])
        for mine, src in zip(grown.layers, blocks, strict=True):
            mine.load_state_dict(src.state_dict())
        grown.norm.load_state_dict(draft.norm.state_dict())
        grown.lm_head.load_state_dict(draft.lm_head.state_dict())
    return grown


# -- the shipped default draft -------------------------------------------------------------------------

DEFAULT_DRAFT = "smollm2-135m-draft"


def default_draft_dir() -> Path:
    """The draft shipped for the embedded default target (SmolLM2-135M-Instruct)."""
    from importlib import resources

    return Path(str(resources.files("paperclub.models").joinpath("drafts", DEFAULT_DRAFT)))


def default_draft_for(target_dir: str | Path) -> Path | None:
    """The shipped draft if it fits the target in `target_dir` (same config and tokenizer), else None."""
    draft_dir = default_draft_dir()
    if not (draft_dir / "model.safetensors").is_file():
        return None
    try:
        check_draft_compatible(draft_dir, target_dir)
        d, t = _read_config(draft_dir), _read_config(Path(target_dir))
    except UserError:
        return None
    same = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "rope_theta")
    return draft_dir if all(d.get(k) == t.get(k) for k in same) else None


# -- files ----------------------------------------------------------------------------------------------

def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json: pass a draft directory made by `paperclub distill`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): re-create the draft") from e


def save_draft(draft: DraftLM, out_dir: Path, target_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write `draft` as a draft directory (bf16 weights) into `out_dir` (which should be a fresh path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = _read_config(Path(target_dir))
    hf["num_hidden_layers"] = draft.cfg.num_layers
    hf["torch_dtype"] = hf["dtype"] = "bfloat16"
    hf[DRAFT_KEY] = {"draft_vocab_size": len(draft.vocab_ids), "shared_embedding": True, **(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    tensors = {name: t.detach().to("cpu", torch.bfloat16).contiguous() for name, t in draft.draft_state()}
    tensors[VOCAB_IDS] = draft.vocab_ids.to("cpu", torch.int64).contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (Path(target_dir) / name).is_file():
            shutil.copyfile(Path(target_dir) / name, out_dir / name)


def is_draft_dir(model_dir: str | Path) -> bool:
    path = Path(model_dir) / "config.json"
    try:
        return path.is_file() and DRAFT_KEY in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def weights_digest(model_dir: str | Path) -> str:
    """A digest of a model directory's weights (its `*.safetensors` files, by name and content): what a cache of
    measurements made with these weights (auto's calibration) is keyed by, so a retrained draft saved over an old
    one in the same place is measured again."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def _tokenizer_fingerprint(model_dir: Path) -> tuple[int, dict[str, int]] | None:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    try:
        vocab = HFTokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as e:
        raise UserError(f"{path} could not be loaded ({type(e).__name__}): re-create the draft") from None
    return len(vocab), vocab


def check_draft_compatible(draft_dir: str | Path, target_dir: str | Path) -> None:
    """Raise `UserError` unless the draft in `draft_dir` can draft for the target in `target_dir`: same
    vocabulary size and tokenizer, same rope (theta and scaling), same context length, same width/heads."""
    draft_dir, target_dir = Path(draft_dir), Path(target_dir)
    dcfg = ModelConfig.from_dir(draft_dir)
    tcfg = ModelConfig.from_dir(target_dir)
    if dcfg.vocab_size != tcfg.vocab_size:
        raise UserError(f"draft vocab ({dcfg.vocab_size}) differs from target vocab ({tcfg.vocab_size}): "
                        "use a draft trained with the target's tokenizer")
    dtok, ttok = _tokenizer_fingerprint(draft_dir), _tokenizer_fingerprint(target_dir)
    if dtok is not None and ttok is not None and dtok[1] != ttok[1]:
        diff = next((t for t, i in ttok[1].items() if dtok[1].get(t) != i), None)
        raise UserError(f"draft tokenizer differs from the target's (e.g. token {diff!r} has another id): "
                        "use a draft trained with the target's tokenizer")
    if (dcfg.rope_theta, dcfg.rope_scaling) != (tcfg.rope_theta, tcfg.rope_scaling):
        raise UserError(f"draft rope (theta {dcfg.rope_theta}, scaling {dcfg.rope_scaling or 'none'}) differs "
                        f"from the target's (theta {tcfg.rope_theta}, scaling {tcfg.rope_scaling or 'none'}): "
                        "use a draft distilled from this target")
    if dcfg.max_position_embeddings != tcfg.max_position_embeddings:
        raise UserError(f"draft context length ({dcfg.max_position_embeddings}) differs from the target's "
                        f"({tcfg.max_position_embeddings}): use a draft distilled from this target")
    shape = ("hidden_size", "num_heads", "num_kv_heads", "head_dim")
    if any(getattr(dcfg, f) != getattr(tcfg, f) for f in shape):
        raise UserError("draft width/heads differ from the target's: this draft shares the target's embedding "
                        "and must have its hidden size; use a draft distilled from this target")


def load_draft(draft_dir: str | Path, target: Llama, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> DraftLM:
    """Load a draft directory for `target` (whose embedding it shares); same interface as `Llama`."""
    draft_dir = Path(draft_dir)
    hf = _read_config(draft_dir)
    if DRAFT_KEY not in hf:
        raise UserError(f"{draft_dir} is not a paperclub draft (config.json has no {DRAFT_KEY!r}): "
                        "make one with `paperclub distill`")
    cfg = ModelConfig.from_hf(hf)
    if cfg.vocab_size != target.cfg.vocab_size:
        raise UserError(f"draft vocab ({cfg.vocab_size}) differs from target vocab ({target.cfg.vocab_size}): "
                        "use a draft trained with the target's tokenizer")
    if cfg.hidden_size != target.cfg.hidden_size:
        raise UserError(f"draft hidden size ({cfg.hidden_size}) differs from the target's "
                        f"({target.cfg.hidden_size}): use a draft distilled from this target")
    device = torch.device(device) if device is not None else target.device
    dtype = dtype or target.dtype
    path = draft_dir / "model.safetensors"
    tensors, vocab_ids = read_draft_file(path, cfg.vocab_size)
    draft = empty_draft(DraftLM, cfg, vocab_ids, target, device, dtype)
    if tensors.get("lm_head.weight") is None or tensors["lm_head.weight"].shape[0] != len(vocab_ids):
        raise UserError(f"{path}: lm_head.weight must have one row per draft vocabulary id: re-create the draft")
    _load_own(draft, tensors)
    draft.set_rope(target.rope_cos.shape[0])
    return draft.eval().requires_grad_(False)


def read_draft_file(path: Path, vocab_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The tensors of a draft's (or a draft head's) `model.safetensors` and its checked `draft.vocab_ids`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {path} ({e}): re-create the draft") from e
    vocab_ids = tensors.pop(VOCAB_IDS, None)
    if vocab_ids is None or vocab_ids.dim() != 1 or not len(vocab_ids):
        raise UserError(f"{path} has no {VOCAB_IDS} tensor: re-create the draft with `paperclub distill`")
    if int(vocab_ids.min()) < 0 or int(vocab_ids.max()) >= vocab_size or len(vocab_ids.unique()) != len(vocab_ids):
        raise UserError(f"{path}: {VOCAB_IDS} must be distinct ids in [0, {vocab_size}): re-create the draft")
    return tensors, vocab_ids


def empty_draft(cls: type[DraftLM], cfg: ModelConfig, vocab_ids: torch.Tensor, target: Llama,
                device: torch.device, dtype: torch.dtype) -> DraftLM:
    """An uninitialised draft of class `cls` (a `DraftLM` or a draft head) on `device` in `dtype`, sharing the
    target's embedding (a converted copy if the target lives elsewhere or in another dtype)."""
    embed = target.embed
    if embed.weight.device != device or embed.weight.dtype != dtype:
        embed = nn.Embedding.from_pretrained(embed.weight.detach().to(device, dtype), freeze=True)
    with torch.device("meta"):
        draft = cls(cfg, nn.Embedding(cfg.vocab_size, cfg.hidden_size), vocab_ids, max_positions=1)
    draft = draft.to_empty(device=device).to(dtype)
    draft.embed = embed
    draft.vocab_ids = vocab_ids.to(device)
    return draft


def _load_own(draft: DraftLM, tensors: dict[str, torch.Tensor]) -> None:
    """`load_hf_weights` for the layers and norm (the embedding it expects is the draft's shared one, given
    back to it as is); the head is copied here since tied targets' loaders skip `lm_head.weight`."""
    load_hf_weights(draft, {**tensors, "model.embed_tokens.weight": draft.embed.weight}.items())
    with torch.no_grad():
        draft.lm_head.weight.copy_(tensors["lm_head.weight"].to(draft.dtype))


def load_draft_model(draft_dir: str | Path, target_dir: str | Path | None, device, dtype: torch.dtype,
                     target: Llama | None = None) -> Llama:
    """The one place a draft directory becomes a model, for SD and for the SSD draft process alike.

    A paperclub draft (`is_draft_dir`) reuses the target's embedding: from `target` when given, else the target
    is loaded from `target_dir`. Any other Hugging Face model may draft if it shares the target's vocabulary
    and tokenizer."""
    if is_draft_dir(draft_dir):
        if target_dir is None:
            raise UserError(f"{draft_dir} is a paperclub draft: it needs its target model to load")
        check_draft_compatible(draft_dir, target_dir)
        if target is None:
            from paperclub.models.loader import load_model

            target = load_model(target_dir, device, dtype)
        return load_draft(draft_dir, target, device, dtype)
    if target_dir is not None:
        dcfg, tcfg = ModelConfig.from_dir(draft_dir), ModelConfig.from_dir(target_dir)
        if dcfg.vocab_size != tcfg.vocab_size:
            raise UserError(f"draft vocab ({dcfg.vocab_size}) differs from target vocab ({tcfg.vocab_size}): "
                            "use a draft trained with the target's tokenizer")
        dtok, ttok = _tokenizer_fingerprint(Path(draft_dir)), _tokenizer_fingerprint(Path(target_dir))
        if dtok is not None and ttok is not None and dtok[1] != ttok[1]:
            raise UserError(f"{draft_dir} has a different tokenizer than {target_dir}: the draft must share it")
    from paperclub.models.loader import load_model

    return load_model(draft_dir, device, dtype)
