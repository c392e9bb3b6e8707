"""Cache-aware (Saguaro) sampling: make the draft's rejections land on the bonus tokens it has cached.

At a rejection the target samples the correction from norm(max(0, p - q)). The draft caches its top-F tokens
as bonus candidates, so lowering q on exactly those tokens (times C < 1, renormalised) moves residual mass
onto them and raises the cache hit rate, at some cost in acceptance. Exactness is untouched as long as the
scaled q is used both to sample the draft tokens and in the target's acceptance test: the rule is exact for
any q the draft tokens really follow.
"""

from __future__ import annotations

import torch


def cache_aware(q: torch.Tensor, top: int, c: float) -> torch.Tensor:
    """(N, V) draft probabilities -> the same with each row's `top` most likely tokens scaled by `c`, renormalised."""
    top = min(top, q.shape[-1])
    values, index = q.topk(top, dim=-1)
    scaled = q.scatter(-1, index, values * c)
    return scaled / scaled.sum(-1, keepdim=True)
