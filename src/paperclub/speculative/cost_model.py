"""A cost model of AR, SD and SSD: tokens/s from measured step times, acceptance and the speculation cache's hit
rate, for a given placement (threads per process on a CPU, or devices), K and fan-out.

Inputs (all measured, or stated as assumptions where they are not):
    T_t(r, p)  seconds of one target forward over r new rows (tokens) with placement p (threads or a device)
    T_d(r, p)  the same for the draft
    a_i        per-position acceptance: the fraction of drafts whose token i (0-based) was accepted (vLLM's
               acceptance_rate_per_pos; acceptance is a prefix, so a_0 >= a_1 >= ...)
    h(F)       the SSD speculation cache's hit rate with F bonus candidates per accepted length
    P, N, b    prompt tokens, new tokens per sequence, batch size (every row drafts and verifies together)

Tokens per round. A round of SD/SSD emits the accepted draft tokens plus one target token. Token i is emitted
iff tokens 0..i were all accepted, which is what a_i counts, so the expected tokens per target forward are

    E(K) = 1 + sum_{i<K} a_i                          (vLLM's mean_acceptance_length)

With perfect acceptance E = K + 1; with none, E = 1. Past the measured positions a_i is extended geometrically
with the ratio of the last two (a constant per-token acceptance alpha gives a_i = alpha^(i+1)).

AR. Prefill gives the first token; each of the N - 1 others costs one decode step over b rows:

    time_AR = T_pre + (N - 1) (T_t(b) + o_AR),        tok/s = b N / time_AR

(o_AR, like SD's o below: engine bookkeeping per step outside the forward; 0 unless calibrated, see
`overhead_from`: a short real run on a calibration prompt, minus what the step times predict for it.)

SD. The draft runs K steps (the first feeds the row's uncached tokens, about one), then the target verifies
K + 1 positions per row in one forward; both run one after the other with the same placement:

    round_SD = K T_d(b) + T_t(b (K + 1)) + o,     time_SD = T_pre_t + T_pre_d + (N - 1) / E(K) round_SD

(o: per-round bookkeeping outside the forwards; 0 unless calibrated.)

SSD. The draft has its own process and placement. After answering round t it builds round t+1's cache while
the target verifies: one glue forward over K + 1 tokens, then K branch-decoding steps over F (K + 1) rows per
sequence (F + miss extra after a miss). The target sends its outcome, waits for the answer, verifies. With
answer time a_t and build time B, the next answer can go out only when both the target's verify (+ the message
round trip c) and the draft's build are done, plus the serve time of the next round (0 on a hit; on a miss the
jit fallback drafts K tokens now):

    a_{t+1} = a_t + max(V + c, B) + S,     V = T_t(b (K + 1)),  B = T_d(b (K + 1)) + K T_d(b F' (K + 1)),
    E[S] = (1 - h^b) K T_d(b)              (a batch waits for the jit of its missed rows)

so round_SSD = max(V + c, B) + (1 - h^b) K T_d(b), and with the jit fallback every round drafts K tokens,
hit or miss, so E(K) is SD's. (F' = h F + (1 - h) F_miss: the build after a miss uses its own fan-out.)
    time_SSD = T_pre_t + (N - 1) / E(K) round_SSD

Placement. On a CPU each process gets its own threads; when the two processes' threads add up to more than the
cores, both are slowed by (threads / cores) (oversubscribed OpenMP barriers wait on descheduled threads; this
factor is a lower bound of the real stall). Processes on separate cores still share memory bandwidth:
`contention` multiplies both sides' step times when SSD runs them at once (1.0 unless calibrated). On separate
devices (the paper's setting) neither applies.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from paperclub.errors import UserError
from paperclub.speculative import metrics as spec_metrics

log = logging.getLogger(__name__)


# -- measured inputs ------------------------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Seconds of one forward over r new rows, measured at a few r; linear in r between and beyond them (a decode
    step is memory-bound: weights once, plus a per-row term)."""

    seconds: dict[int, float]  # rows -> seconds
    prefill_per_token_s: float = 0.0  # seconds per prompt token of a prefill

    def __post_init__(self) -> None:
        if not self.seconds or any(r < 1 or s <= 0 for r, s in self.seconds.items()):
            raise UserError(f"step times need rows >= 1 and seconds > 0, got {self.seconds}")
        self.seconds = {int(r): float(s) for r, s in sorted(self.seconds.items())}

    def at(self, rows: float) -> float:
        rs = list(self.seconds)
        if len(rs) == 1:
            return self.seconds[rs[0]]
        lo, hi = (rs[0], rs[1]) if rows <= rs[0] else (rs[-2], rs[-1])
        for a, b in zip(rs, rs[1:], strict=False):
            if a <= rows <= b:
                lo, hi = a, b
                break
        slope = (self.seconds[hi] - self.seconds[lo]) / (hi - lo)
        return max(self.seconds[rs[0]] * 0.5, self.seconds[lo] + slope * (rows - lo))

    def scaled(self, factor: float) -> StepTimes:
        return StepTimes({r: s * factor for r, s in self.seconds.items()}, self.prefill_per_token_s * factor)


@dataclass
class Acceptance:
    """Per-position acceptance a_i (vLLM's acceptance_rate_per_pos)."""

    per_pos: list[float]

    def __post_init__(self) -> None:
        if not self.per_pos or any(not 0 <= a <= 1 for a in self.per_pos):
            raise UserError(f"per-position acceptance must be a non-empty list in [0, 1], got {self.per_pos}")

    @classmethod
    def geometric(cls, alpha: float, k: int = 16) -> Acceptance:
        """A draft whose every token is accepted with probability alpha, independently: a_i = alpha^(i+1)."""
        return cls([alpha ** (i + 1) for i in range(k)])

    def at(self, i: int) -> float:
        a = self.per_pos
        if i < len(a):
            return a[i]
        ratio = a[-1] / a[-2] if len(a) > 1 and a[-2] > 0 else a[-1]
        return a[-1] * min(ratio, 1.0) ** (i - len(a) + 1)

    def tokens_per_round(self, k: int) -> float:
        """E(K) = 1 + sum_{i<K} a_i: tokens emitted per target forward."""
        return 1.0 + sum(self.at(i) for i in range(k))


@dataclass
class HitRate:
    """The SSD speculation cache's hit rate as a function of the fan-out F (candidates per accepted length).
    Between measured F: linear; past the largest: the miss rate falls as a power law in F (the SSD paper's
    empirical form, exponent from the last two points)."""

    by_fanout: dict[int, float]

    def __post_init__(self) -> None:
        if not self.by_fanout or any(f < 1 or not 0 <= h <= 1 for f, h in self.by_fanout.items()):
            raise UserError(f"hit rates need F >= 1 and rates in [0, 1], got {self.by_fanout}")
        self.by_fanout = {int(f): float(h) for f, h in sorted(self.by_fanout.items())}

    def at(self, fanout: float) -> float:
        fs = list(self.by_fanout)
        if fanout <= fs[0]:
            return self.by_fanout[fs[0]]
        for a, b in zip(fs, fs[1:], strict=False):
            if a <= fanout <= b:
                return self.by_fanout[a] + (self.by_fanout[b] - self.by_fanout[a]) * (fanout - a) / (b - a)
        last = self.by_fanout[fs[-1]]
        if len(fs) < 2 or last >= 1:
            return last
        prev = self.by_fanout[fs[-2]]
        r = math.log((1 - prev) / (1 - last)) / math.log(fs[-1] / fs[-2]) if prev < 1 and last > prev else 0.0
        return 1 - (1 - last) * (fs[-1] / fanout) ** r


@dataclass
class Placement:
    """Where each process runs: threads on a shared CPU of `cores` cores, or its own device (threads ignored)."""

    target_threads: int
    draft_threads: int = 1
    cores: int = 2
    separate_devices: bool = False

    def __post_init__(self) -> None:
        if min(self.target_threads, self.draft_threads, self.cores) < 1:
            raise UserError(f"threads and cores must be >= 1, got {self}")


@dataclass
class Costs:
    """Measured step times per (model, threads), or per model on its own device (key 0)."""

    target: dict[int, StepTimes]  # threads -> step times (0: a device)
    draft: dict[int, StepTimes]
    round_overhead_s: float = 0.0  # o: per-round bookkeeping of SD/SSD outside the forwards
    ar_overhead_s: float = 0.0  # the same for an AR step (scheduling, sampling, detokenizing)
    ssd_message_s: float = 0.0  # c: the SSD target <-> draft round trip per round
    contention: float = 1.0  # step-time factor when target and draft run at once on one CPU

    def of(self, table: dict[int, StepTimes], threads: int, who: str) -> StepTimes:
        if threads in table:
            return table[threads]
        if 0 in table:
            return table[0]
        raise UserError(f"no {who} step times measured for {threads} threads (have {sorted(table)})")


@dataclass
class Workload:
    new_tokens: int = 64
    prompt_tokens: float = 128.0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.new_tokens < 1 or self.prompt_tokens < 0 or self.batch_size < 1:
            raise UserError(f"workload needs new_tokens >= 1, prompt_tokens >= 0, batch_size >= 1, got {self}")


# -- predictions ----------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    mode: str
    tokens_per_s: float
    k: int | None = None
    fanout: int | None = None
    round_s: float | None = None
    tokens_per_round: float | None = None
    detail: dict = field(default_factory=dict)
    drafter: str | None = None  # SD only: "draft" (the model), "ngram+draft" (prompt lookup first), "tree"


def _tps(w: Workload, prefill_s: float, rounds: float, round_s: float) -> float:
    return w.batch_size * w.new_tokens / (prefill_s + rounds * round_s)


def predict_ar(costs: Costs, w: Workload, threads: int) -> Prediction:
    t = costs.of(costs.target, threads, "target")
    step = t.at(w.batch_size) + costs.ar_overhead_s
    prefill = t.prefill_per_token_s * w.prompt_tokens * w.batch_size
    return Prediction("ar", _tps(w, prefill, w.new_tokens - 1, step), round_s=step, tokens_per_round=1.0,
                      detail={"prefill_s": prefill})


def predict_sd(costs: Costs, acc: Acceptance, k: int, w: Workload, threads: int, draft_share: float = 1.0,
               drafter: str = "draft") -> Prediction:
    """SD with a chain of K draft tokens per round. `draft_share` < 1: prompt lookup first ("ngram+draft"), the
    draft model only in the rounds where no n-gram matched (that fraction of rounds pays K T_d; `acc` is then
    the combined acceptance, measured with both)."""
    if not 0 <= draft_share <= 1:
        raise UserError(f"draft_share must be in [0, 1], got {draft_share}")
    t, d = costs.of(costs.target, threads, "target"), costs.of(costs.draft, threads, "draft")
    b = w.batch_size
    draft_s, verify_s = draft_share * k * d.at(b), t.at(b * (k + 1))
    round_s = draft_s + verify_s + costs.round_overhead_s
    e = acc.tokens_per_round(k)
    prefill = (t.prefill_per_token_s + d.prefill_per_token_s) * w.prompt_tokens * b
    return Prediction("sd", _tps(w, prefill, (w.new_tokens - 1) / e, round_s), k=k, round_s=round_s,
                      tokens_per_round=e, detail={"draft_s": draft_s, "verify_s": verify_s, "prefill_s": prefill,
                                                  "draft_share": draft_share}, drafter=drafter)


@dataclass
class TreeShape:
    """What a token-tree round looks like on average (measured: the engine's `num_tree_nodes`, the rounds in
    which the draft ran, and the tokens per round that trees of this shape gave)."""

    tokens_per_round: float  # E: accepted + 1, per target forward
    nodes: float  # tree nodes per row verified each round
    width: int  # the draft's branches (rows of its K - 1 branch steps)
    draft_share: float = 1.0  # fraction of rounds in which the draft ran (the rest: n-gram guesses only)

    def __post_init__(self) -> None:
        if self.tokens_per_round < 1 or self.nodes < 0 or self.width < 0 or not 0 <= self.draft_share <= 1:
            raise UserError(f"a tree shape needs tokens_per_round >= 1, nodes >= 0, width >= 0 and a draft share "
                            f"in [0, 1], got {self}")


def predict_tree(costs: Costs, shape: TreeShape, depth: int, w: Workload, threads: int) -> Prediction:
    """SD with token trees (`speculative.tree`): per round the draft catches up and branches (one forward of about
    one row, then depth - 1 over `width` rows; depth = tokens per draft branch), and the target verifies the root
    and every node in one forward:

        round_tree = share (T_d(b) + (depth - 1) T_d(b w)) + T_t(b (1 + nodes)) + o,
        time = T_pre + (N - 1) / E round_tree

    E comes from a measured tree run (a tree's acceptance is not a function of the chain's a_i alone)."""
    t, d = costs.of(costs.target, threads, "target"), costs.of(costs.draft, threads, "draft")
    b = w.batch_size
    draft_s = shape.draft_share * (d.at(b) + (depth - 1) * d.at(b * max(shape.width, 1))) if shape.width else 0.0
    verify_s = t.at(b * (1 + shape.nodes))
    round_s = draft_s + verify_s + costs.round_overhead_s
    prefill = (t.prefill_per_token_s + (d.prefill_per_token_s if shape.width else 0.0)) * w.prompt_tokens * b
    return Prediction("tree", _tps(w, prefill, (w.new_tokens - 1) / shape.tokens_per_round, round_s), k=depth,
                      round_s=round_s, tokens_per_round=shape.tokens_per_round,
                      detail={"draft_s": draft_s, "verify_s": verify_s, "prefill_s": prefill, "nodes": shape.nodes},
                      drafter="tree")


def predict_ssd(costs: Costs, acc: Acceptance, hits: HitRate, k: int, fanout: int, w: Workload, place: Placement,
                miss_fanout: int | None = None) -> Prediction:
    key_t, key_d = (0, 0) if place.separate_devices else (place.target_threads, place.draft_threads)
    t, d = costs.of(costs.target, key_t, "target"), costs.of(costs.draft, key_d, "draft")
    slow = 1.0
    if not place.separate_devices:
        slow = costs.contention * max(1.0, (place.target_threads + place.draft_threads) / place.cores)
    b, h = w.batch_size, hits.at(fanout)
    f_eff = h * fanout + (1 - h) * (miss_fanout or fanout + 1)
    verify_s = t.at(b * (k + 1)) * slow + costs.ssd_message_s
    build_s = (d.at(b * (k + 1)) + k * d.at(b * f_eff * (k + 1))) * slow
    miss_s = (1 - h**b) * k * d.at(b) * slow
    round_s = max(verify_s, build_s) + miss_s + costs.round_overhead_s
    e = acc.tokens_per_round(k)
    prefill = t.prefill_per_token_s * w.prompt_tokens * b * slow
    return Prediction("ssd", _tps(w, prefill, (w.new_tokens - 1) / e, round_s), k=k, fanout=fanout,
                      round_s=round_s, tokens_per_round=e,
                      detail={"verify_s": verify_s, "build_s": build_s, "miss_s": miss_s, "hit_rate": h,
                              "slowdown": slow, "prefill_s": prefill})


# -- choosing a mode -----------------------------------------------------------------------------------------


@dataclass
class Choice:
    best: Prediction
    candidates: list[Prediction]
    reason: str


def choose(costs: Costs, acc: Acceptance | None, hits: HitRate | None, w: Workload, cores: int,
           ks: Iterable[int] = range(1, 9), fanouts: Iterable[int] = (1, 2, 3), margin: float = 0.05,
           extra: Iterable[Prediction] = ()) -> Choice:
    """The fastest predicted of AR (all cores), SD (all cores) for each K, SSD (target and draft splitting
    the cores) for each K and F, and the `extra` candidates (other drafters, predicted by the caller: prompt
    lookup with the draft, token trees). Speculation must beat AR by `margin` to be chosen: a near-tie is noise,
    and AR costs no draft."""
    ks = list(ks)
    ar = predict_ar(costs, w, cores)
    cands = [ar, *extra]
    if acc is not None:
        cands += [predict_sd(costs, acc, k, w, cores) for k in ks]
        if hits is not None and cores >= 2:
            place = Placement(target_threads=cores - 1, draft_threads=1, cores=cores)
            if place.target_threads in costs.target and 1 in costs.draft:
                cands += [predict_ssd(costs, acc, hits, k, f, w, place) for k in ks for f in fanouts]
    best = max(cands, key=lambda p: p.tokens_per_s)
    if best.mode != "ar" and best.tokens_per_s < (1 + margin) * ar.tokens_per_s:
        reason = (f"{describe(best)} predicted {best.tokens_per_s:.1f} tok/s, within {margin:.0%} of AR's "
                  f"{ar.tokens_per_s:.1f}: AR")
        best = ar
    else:
        others = [p for p in cands if (p.mode, p.drafter) != (best.mode, best.drafter)]
        runner_up = max(others, key=lambda p: p.tokens_per_s, default=None)
        reason = f"{describe(best)} predicted {best.tokens_per_s:.1f} tok/s"
        if runner_up is not None:
            reason += f", next best {describe(runner_up)} {runner_up.tokens_per_s:.1f}"
        if acc is None:
            reason += " (no draft: AR)"
    return Choice(best, cands, reason)


def describe(p: Prediction) -> str:
    if p.drafter == "tree":
        return f"SD trees K={p.k}"
    name = "SD n-gram+draft" if p.drafter == "ngram+draft" else p.mode.upper()
    return name + (f" K={p.k}" if p.k else "") + (f" F={p.fanout}" if p.fanout else "")


# -- calibration on the engine's runners ------------------------------------------------------------------------


def time_forward(runner, rows: int, context: int = 128, repeats: int = 5) -> float:
    """Median seconds of `runner.append` of `rows` new tokens to one sequence after `context` cached ones
    (the same positions are rewritten each repeat, so nothing grows)."""
    runner.reserve(runner.cache.num_slots + 1, context + rows + 1)
    slot = runner.cache.allocate()
    try:
        runner.append([slot], [0], [[1] * context], True)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            runner.append([slot], [context], [[1] * rows], rows == 1)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])
    finally:
        runner.cache.release(slot)


def time_prefill(runner, tokens: int = 128, repeats: int = 2) -> float:
    """Seconds per token of a prefill of `tokens` tokens."""
    runner.reserve(runner.cache.num_slots + 1, tokens + 1)
    slot = runner.cache.allocate()
    try:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            runner.append([slot], [0], [[1] * tokens], True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]) / tokens
    finally:
        runner.cache.release(slot)


def calibrate_steps(runner, rows: Iterable[int], threads: Iterable[int], context: int = 128,
                    repeats: int = 5, set_threads: Callable[[int], None] | None = None) -> dict[int, StepTimes]:
    """Step times of one runner for each thread count (seconds: a few forwards per (rows, threads))."""
    import torch

    set_threads = set_threads or torch.set_num_threads
    before = torch.get_num_threads()
    out = {}
    try:
        for n in threads:
            set_threads(n)
            time_forward(runner, 1, context, 1)  # warm-up at this thread count
            out[n] = StepTimes({r: time_forward(runner, r, context, repeats) for r in rows},
                               time_prefill(runner, context))
    finally:
        set_threads(before)
    return out


CALIBRATION_PROMPT = [{"role": "user", "content": "Explain in a few sentences how a bicycle stays upright."}]
# `auto`'s calibration set: two chat questions, a code edit and a summary. Prompt lookup pays on the last two and not
# on the first, so the share of rounds it drafts, and its acceptance, are a mix rather than either extreme; chat, the
# default model's use, weighs as much as the other two together.
CALIBRATION_PROMPTS = [
    CALIBRATION_PROMPT,
    [{"role": "user", "content": "What are three good habits for someone learning to cook at home?"}],
    [{"role": "user", "content": "Rename the variable `total` to `running_sum` in this function and show the "
      "whole function again:\n\n```python\ndef mean_of_positive(values):\n    total = 0\n    count = 0\n"
      "    for v in values:\n        if v > 0:\n            total += v\n            count += 1\n"
      "    return total / count if count else 0.0\n```"}],
    [{"role": "user", "content": "Summarize this note in two sentences:\n\nThe library closes at six on weekdays "
      "and at noon on Saturdays. Books borrowed on a Friday are due back the following Friday, and a book "
      "returned late costs ten cents a day. Members can renew a book twice online, as long as nobody else has "
      "reserved it. The reading room on the second floor is quiet space: phones must be silent there, and "
      "group study happens in the rooms on the first floor, which can be booked at the front desk."}],
]


@dataclass
class RunSample:
    """A short real generation on the calibration prompt(s): what the step times cannot show."""

    wall_s: float
    rounds: int
    prompt_tokens: int
    new_tokens: int
    acceptance: Acceptance | None
    hit_rate: float | None
    fanout: int | None
    tree: TreeShape | None = None  # with token trees: what their rounds looked like
    draft_share: float = 1.0  # the fraction of rounds the draft model drafted (the rest: prompt lookup)

    @property
    def workload(self) -> Workload:
        return Workload(self.new_tokens, self.prompt_tokens)


def sample_run(llm, new_tokens: int = 48, prompt=None, prompts=None) -> RunSample:
    """Generate `new_tokens` greedy tokens (EOS ignored) from the calibration prompt with `llm`, once to warm up
    (8 tokens), once timed. With `prompts`, one timed generation each (batch 1, one after the other), summed as
    if they were one: wall time, rounds, prompt and new tokens, and the speculation counters."""
    from paperclub.engine.sampling import SamplingParams

    prompts = prompts or [prompt or CALIBRATION_PROMPT]
    ids = [llm.encode(p) for p in prompts]
    llm.generate([ids[0]], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    wall, outs = 0.0, []
    for x in ids:
        t0 = time.perf_counter()
        outs.append(llm.generate([x], SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True))[0])
        wall += time.perf_counter() - t0
    m = _summed([o.metrics for o in outs])
    per_pos = m.get("acceptance_rate_per_pos")
    looked = m.get("hits", 0) + m.get("misses", 0)
    fanout = getattr(llm.engine.decoder, "stats", {}).get("adaptive_fanout")
    drafts = m.get("num_drafts") or 0
    tree = None
    if m.get("mean_tree_nodes") is not None:
        config = getattr(llm.engine.decoder.proposer, "config", None)
        tree = TreeShape(m["mean_acceptance_length"], m["mean_tree_nodes"], getattr(config, "draft_width", 0),
                         m["num_tree_draft_rounds"] / drafts)
    new = sum(len(o.token_ids) for o in outs)
    share = 1.0 - m.get(spec_metrics.NGRAM_DRAFTS, 0) / drafts if drafts else 1.0
    return RunSample(wall, int(drafts or new - len(outs)), sum(len(x) for x in ids), new,
                     Acceptance(per_pos) if per_pos else None, m.get("hits", 0) / looked if looked else None,
                     int(fanout) if fanout else None, tree, share)


def _summed(many: list[dict]) -> dict:
    """One request's metrics, or several requests' speculation counters and SSD cache counts summed."""
    if len(many) == 1:
        return many[0]
    out = spec_metrics.summary(spec_metrics.total(many)) if any(m.get("num_drafts") for m in many) else {}
    for key in ("hits", "misses"):
        out[key] = sum(m.get(key, 0) for m in many)
    return out


def overhead_from(sample: RunSample, pred: Prediction) -> float:
    """The per-round time a sample run took beyond what the model (without overhead) predicts for its rounds:
    bookkeeping, messages, and for SSD the two processes slowing each other down."""
    prefill = pred.detail.get("prefill_s", 0.0)
    return max(0.0, (sample.wall_s - prefill) / max(sample.rounds, 1) - pred.round_s)


def to_json(x) -> dict:
    return asdict(x)


# -- the SSD paper's setting ------------------------------------------------------------------------------------

# Kumar, Dao, May, "Speculative Speculative Decoding" (ICLR 2026): Llama-3-70B target on 4 H100s, Llama-3.2-1B draft
# on a fifth. Published: AR 54 tok/s, SD ~172, SSD ~270; 80-90% of verification outcomes predicted (cache hits).
PAPER_PUBLISHED = {"ar": 54.0, "sd": 172.0, "ssd": 270.0}
PAPER_HIT_RATE = 0.85  # published: 80-90%; the middle of the range
# ASSUMPTIONS (not found in the sources reachable from here; see BENCHMARKS-cost-model.md):
PAPER_VERIFY_OVER_DECODE = 1.0  # a K+1-token verify of a memory-bound 70B on 4 H100s costs one decode step
PAPER_DRAFT_STEP_S = 2.5e-3  # one Llama-3.2-1B decode step on one H100 (~400 tok/s batch 1 in open engines)
PAPER_ALPHA = 0.9  # per-token acceptance of Llama-3.2-1B for Llama-3-70B (geometric: a_i = alpha^(i+1))
PAPER_K = 5  # draft tokens per round, SD and SSD


def paper_setting(alpha: float = PAPER_ALPHA, draft_step_s: float = PAPER_DRAFT_STEP_S,
                  hit_rate: float = PAPER_HIT_RATE) -> tuple[Costs, Acceptance, HitRate, Placement]:
    """Costs of the paper's setting: the target step from its published AR speed (1 / 54 s), the rest as above.
    A draft step is memory-bound on an H100 for the few dozen rows of a cache build, so it costs the same at every
    row count here; the verify likewise."""
    decode = 1.0 / PAPER_PUBLISHED["ar"]
    target = StepTimes({1: decode, 64: decode * PAPER_VERIFY_OVER_DECODE})
    draft = StepTimes({1: draft_step_s, 64: draft_step_s})
    costs = Costs(target={0: target}, draft={0: draft})
    return costs, Acceptance.geometric(alpha), HitRate({PAPER_FANOUT: hit_rate}), Placement(1, 1, 5, True)


PAPER_FANOUT = 3


def predict_paper(k: int = PAPER_K, **kw) -> dict[str, Prediction]:
    costs, acc, hits, place = paper_setting(**kw)
    w = Workload(new_tokens=512, prompt_tokens=0)  # decode speed: prefill not counted
    return {"ar": predict_ar(costs, w, 0), "sd": predict_sd(costs, acc, k, w, 0),
            "ssd": predict_ssd(costs, acc, hits, k, PAPER_FANOUT, w, place)}
