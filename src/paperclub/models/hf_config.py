"""The `config.json` a converted model is written with: the Hugging Face fields, for the file format.

The runtime reads configs through `paperclub.models.config.ModelConfig`; this class is the writer's side."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paperclub.errors import UserError

# model_type -> the class name transformers registers for it
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass
class HFConfig:
    """The fields of a Llama/Qwen2 `config.json` that decide the computation."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_hf_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d = {
            "architectures": [ARCHITECTURES.get(self.model_type, "LlamaForCausalLM")],
            **d,
            "dtype": self.torch_dtype,  # transformers >= 4.56 reads `dtype`; older ones `torch_dtype`
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if self.model_type == "llama":
            d["pretraining_tp"] = 1
        else:
            d.pop("attention_bias")  # qwen2 always has q/k/v biases; the field does not exist there
            d.pop("mlp_bias")
            d["use_sliding_window"] = False
        d.update(extra)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> HFConfig:
        try:
            heads = int(d["num_attention_heads"])
            hidden = int(d["hidden_size"])
            known = {f for f in cls.__dataclass_fields__ if f != "extra"}
            kwargs = {k: d[k] for k in known if k in d and d[k] is not None}
            kwargs.setdefault("num_key_value_heads", heads)
            kwargs.setdefault("head_dim", hidden // heads)
            kwargs.setdefault("max_position_embeddings", 2048)
            kwargs.setdefault("torch_dtype", d.get("dtype") or "float32")
            if "rope_theta" not in kwargs and isinstance(d.get("rope_parameters"), dict):
                kwargs["rope_theta"] = d["rope_parameters"].get("rope_theta", 10000.0)
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(
                f"config.json lacks or has a bad field ({e}); is this a Llama-family model?"
            ) from None

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the config (tied embeddings counted once)."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias or self.model_type == "qwen2":
            attn += q + 2 * kv
        mlp = 3 * h * self.intermediate_size
        layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        return embed * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h


def load_config(model_dir: str | Path) -> HFConfig:
    """Read `<model_dir>/config.json`; `UserError` if it is missing or not JSON."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(
            f"{model_dir} has no config.json; pass a Hugging Face model directory or a .gguf file"
        )
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download or re-convert the model") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a JSON object; re-download or re-convert the model")
    return HFConfig.from_hf_dict(d)
