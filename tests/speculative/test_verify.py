"""The acceptance rule, tested directly: emitted tokens follow the (filtered) target distribution."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperclub.engine.sampling import SamplingParams, filtered_probs
from paperclub.speculative.verify import verify_greedy, verify_sampled

DRAWS = 100_000
TV_TOL = 0.01


def emitted_first_tokens(p: torch.Tensor, q: torch.Tensor, seed: int) -> torch.Tensor:
    """Run the rule DRAWS times on one (p, q) pair: drafts are sampled from q as a draft would."""
    K, V = q.shape
    g = torch.Generator().manual_seed(seed)
    draft = torch.stack([torch.multinomial(q[i], DRAWS, replacement=True, generator=g) for i in range(K)], 1)
    u = torch.rand(DRAWS, K + 1, generator=g, dtype=torch.float64)
    v = verify_sampled(draft, q.expand(DRAWS, K, V), p.expand(DRAWS, K + 1, V), u)
    n = torch.tensor(v.num_accepted)
    nxt = torch.tensor(v.next_token)
    return torch.where(n > 0, draft[:, 0], nxt), n, nxt, draft


def tv(samples: torch.Tensor, dist: torch.Tensor) -> float:
    emp = torch.bincount(samples, minlength=dist.numel()).double() / samples.numel()
    return 0.5 * (emp - dist.double()).abs().sum().item()


def random_dist(g: torch.Generator, K: int, V: int, sharp: float) -> torch.Tensor:
    return (torch.randn(K, V, generator=g, dtype=torch.float64) * sharp).softmax(-1).float()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(1, 4), V=st.integers(2, 12), sharp=st.floats(0.3, 3.0))
def test_first_emitted_token_follows_target(seed, K, V, sharp):
    g = torch.Generator().manual_seed(seed)
    p, q = random_dist(g, K + 1, V, sharp), random_dist(g, K, V, sharp)
    first, *_ = emitted_first_tokens(p, q, seed)
    assert tv(first, p[0]) < TV_TOL


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), V=st.integers(3, 10))
def test_bonus_token_follows_last_target_distribution(seed, V):
    """Condition on all K accepted: the bonus token must follow p_{K+1}."""
    g = torch.Generator().manual_seed(seed)
    K = 2
    p, q = random_dist(g, K + 1, V, 0.5), random_dist(g, K, V, 0.5)
    _, n, nxt, _ = emitted_first_tokens(p, q, seed)
    bonus = nxt[n == K]
    assert bonus.numel() > 5_000
    assert tv(bonus, p[K]) < 3 * TV_TOL  # fewer samples than DRAWS: a looser but still tight bound


def test_filtered_target_distribution_with_zero_draft_mass():
    """q with zeros (a reduced-vocabulary draft) and a top-k/top-p filtered p: still exact."""
    g = torch.Generator().manual_seed(7)
    V = 10
    logits_p = torch.randn(3, V, generator=g) * 2
    params = SamplingParams(temperature=0.7, top_k=6, top_p=0.9)
    p = filtered_probs(logits_p, [params] * 3)
    logits_q = torch.randn(2, V, generator=g)
    logits_q[:, 5:] = -float("inf")  # the draft can only propose tokens 0..4
    q = filtered_probs(logits_q, [params] * 2)
    first, *_ = emitted_first_tokens(p, q, 3)
    assert tv(first, p[0]) < TV_TOL
    assert (torch.bincount(first, minlength=V)[p[0] == 0] == 0).all()  # never a filtered-out token


def test_greedy_rule():
    V = 5
    target = torch.tensor([[1, 3, 4, 2]])  # target argmax at positions 0..K
    logits = torch.nn.functional.one_hot(target, V).float()
    v = verify_greedy(torch.tensor([[1, 3, 0]]), logits)
    assert v.num_accepted == [2] and v.next_token == [4]
    v = verify_greedy(torch.tensor([[1, 3, 4]]), logits)
    assert v.num_accepted == [3] and v.next_token == [2]
    v = verify_greedy(torch.tensor([[0, 3, 4]]), logits)
    assert v.num_accepted == [0] and v.next_token == [1]
    assert v.emitted([[0, 3, 4]]) == [[1]]
