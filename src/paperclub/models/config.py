"""The Llama-family model config, read from a Hugging Face `config.json`.

One dataclass covers Llama 2/3 (incl. llama3 rope scaling), SmolLM/SmolLM2, Mistral, Qwen2/2.5 (qkv bias)
and Qwen3 (per-head q/k RMSNorm): they differ only in the fields below.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paperclub.errors import UserError

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
ROPE_TYPES = ("default", "llama3", "linear")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # {"rope_type": "llama3", "factor": ...}
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type not in ARCHITECTURES:
            raise UserError(
                f"unsupported architecture {self.model_type!r}: supported are {', '.join(ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"num_attention_heads {self.num_heads} is not a multiple of kv heads {self.num_kv_heads}")
        rope_type = self.rope_scaling.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise UserError(f"unsupported rope scaling {rope_type!r}: supported are {', '.join(ROPE_TYPES)}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
        per_layer = attn + 3 * d * f + 2 * d
        return self.num_layers * per_layer + v * d * (1 if self.tie_word_embeddings else 2) + d

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Translate a transformers config dict (v4 or v5 layout) into ours."""
        model_type = hf.get("model_type")
        if model_type not in ARCHITECTURES:
            arch = (hf.get("architectures") or ["?"])[0]
            raise UserError(
                f"unsupported architecture {model_type or arch!r}: supported model_type values are "
                f"{', '.join(ARCHITECTURES)}"
            )
        try:
            rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
            rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
            if "type" in rope and "rope_type" not in rope:
                rope["rope_type"] = rope.pop("type")
            if rope.get("rope_type", "default") == "default":
                rope = {}
            n_heads = int(hf["num_attention_heads"])
            eos = hf.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            sliding = hf.get("sliding_window")
            if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
                sliding = None
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=n_heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads),
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
                o_bias=bool(hf.get("attention_bias", False)),
                qk_norm=model_type == "qwen3",
                sliding_window=int(sliding) if sliding else None,
                model_type=model_type,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"config.json is missing or has a bad field ({e!r}): is this a Hugging Face LM?") from e

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise UserError(f"{model_dir} has no config.json: pass a Hugging Face model directory or a .gguf file")
        try:
            hf = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e}): re-download or re-convert the model") from e
        return cls.from_hf(hf)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
