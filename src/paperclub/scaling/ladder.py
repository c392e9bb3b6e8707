"""The model ladder: Llama-style models about 4x apart in non-embedding parameters, built on `paperclub.models`.

Head dimension 32, SwiGLU width 8/3 of the model width (rounded to 16), untied embeddings, rope theta 10,000.
With the default 2,048-token vocabulary the smallest model's embeddings outweigh its blocks, as in any ladder that
starts small; scaling fits use the non-embedding count (Kaplan et al.), which is what grows 4x per rung.
"""

from __future__ import annotations

from paperclub.errors import UserError
from paperclub.models.config import ModelConfig

# name: (hidden size, layers)
LADDER: dict[str, tuple[int, int]] = {
    "s0": (32, 2),  # 0.02M non-embedding parameters
    "s1": (64, 2),  # 0.09M
    "s2": (96, 3),  # 0.33M
    "s3": (160, 4),  # 1.21M
    "s4": (256, 6),  # 4.67M
    "s5": (384, 8),  # 14.1M
}
HEAD_DIM = 32


def model_config(size: str, vocab_size: int, max_positions: int) -> ModelConfig:
    if size not in LADDER:
        raise UserError(f"unknown model size {size!r}: the ladder has {', '.join(LADDER)}")
    d, layers = LADDER[size]
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=d, intermediate_size=int(8 * d / 3) // 16 * 16, num_layers=layers,
        num_heads=d // HEAD_DIM, num_kv_heads=d // HEAD_DIM, head_dim=HEAD_DIM, max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


def non_embedding_params(cfg: ModelConfig) -> int:
    return cfg.num_params() - 2 * cfg.vocab_size * cfg.hidden_size
