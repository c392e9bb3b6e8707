"""The lossless acceptance rule of speculative decoding: the one place where exactness lives.

Given K draft tokens d_1..d_K sampled from draft distributions q_1..q_K and the target's distributions
p_1..p_{K+1} at the same positions (both already filtered by temperature/top-k/top-p):

    for i = 1..K: accept d_i with probability min(1, p_i(d_i) / q_i(d_i));
                  at the first rejection emit a token sampled from norm(max(0, p_i - q_i)) and stop;
    if all K are accepted, emit a bonus token sampled from p_{K+1}.

Every emitted token is then distributed exactly as the target would have sampled it. At temperature 0 the
distributions are one-hot and the rule reduces to "accept the longest prefix equal to the target's argmax,
then emit the target's argmax", which `verify_greedy` computes without building any distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paperclub.engine.sampling import filtered_probs, greedy_tokens, sample_with_uniforms
from paperclub.engine.sequence import Sequence


@dataclass
class Verdict:
    num_accepted: list[int]  # per row: how many draft tokens were accepted (0..K)
    next_token: list[int]  # per row: the correction (after a rejection) or the bonus token (all accepted)

    def emitted(self, draft_tokens: list[list[int]]) -> list[list[int]]:
        return [d[:n] + [t] for d, n, t in zip(draft_tokens, self.num_accepted, self.next_token, strict=True)]


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """draft_tokens (B, K), target_logits (B, K+1, V) -> longest matching prefix and the target's next argmax."""
    target = greedy_tokens(target_logits)  # (B, K+1)
    K = draft_tokens.shape[1]
    match = (draft_tokens == target[:, :K]).int()
    n = match.cumprod(dim=1).sum(dim=1)  # (B,)
    nxt = target.gather(1, n[:, None]).squeeze(1)
    return Verdict(n.tolist(), nxt.tolist())


def draw_uniforms(generators: list[torch.Generator], k: int, device) -> torch.Tensor:
    """K + 1 uniforms per row from the row's own generator (K acceptance tests, one final sample): always the
    same number whatever the outcome, so a request's random stream does not depend on its batch-mates."""
    return torch.stack([torch.rand(k + 1, generator=g, dtype=torch.float64) for g in generators]).to(device)


def verify_sampled(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> Verdict:
    """draft_tokens (B, K); q (B, K, V) draft probabilities; p (B, K+1, V) target probabilities;
    u (B, K+1) uniforms in [0, 1) (see `draw_uniforms`)."""
    B, K = draft_tokens.shape
    idx = draft_tokens[:, :, None]
    p_d = p[:, :K].gather(2, idx).squeeze(2).double()  # (B, K)
    q_d = q.gather(2, idx).squeeze(2).double()
    accept = u[:, :K] * q_d < p_d  # u < p/q without dividing by a zero q
    n = accept.int().cumprod(dim=1).sum(dim=1)  # (B,)
    rows = torch.arange(B, device=p.device)
    final = p[rows, n].double()  # (B, V): p_{K+1} where all were accepted ...
    rejected = n < K
    if rejected.any():  # ... else the residual norm(max(0, p_i - q_i)) at the first rejection
        q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)
        residual = (final - q_pad[rows, n].double()).clamp_(min=0.0)
        mass = residual.sum(-1, keepdim=True)
        # mass is 0 only if p_i == q_i, where rejection has probability 0; fall back to p_i for safety
        residual = torch.where(mass > 0, residual / mass.clamp(min=1e-300), final)
        final = torch.where(rejected[:, None], residual, final)
    nxt = sample_with_uniforms(final, u[:, K])
    return Verdict(n.tolist(), nxt.tolist())


def judge(seqs: list[Sequence], draft: torch.Tensor, q: torch.Tensor | None, logits: torch.Tensor) -> Verdict:
    """The target's verdict on (B, K) draft tokens (q: (B, K, V) or None when every row is greedy) from its
    (B, K + 1, V) logits at [last token, d_1..d_K]."""
    if q is None:
        return verify_greedy(draft, logits)
    params = [s.params for s in seqs]
    B, T, V = logits.shape
    p = filtered_probs(logits.reshape(B * T, V), [x for x in params for _ in range(T)]).view(B, T, V)
    return verify_sampled(draft, q, p, draw_uniforms([s.generator for s in seqs], draft.shape[1], p.device))
