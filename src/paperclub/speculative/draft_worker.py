"""The SSD draft process: answers the target from the speculation cache, then rebuilds it while the target verifies.

The loop, per target round (`serve_forever`):

    1. serve:   the target sends each sequence's outcome (k accepted, bonus token) of the round it just
                verified; a cache hit answers with the K tokens (and draft distributions) decoded earlier on
                that branch; a miss runs the fallback: ``jit`` drafts K tokens now, ``fast`` answers nothing
                (the target's round then yields only its next token).
    2. glue:    one forward over [bonus, spec_1..spec_n] (the tokens just handed to the target) gives n + 1
                next-token distributions, one per possible accepted count k = 0..n.
    3. pick:    for each k, the F_k most likely draft tokens at that position are the bonus candidates; for
                k < n the token spec_{k+1} is excluded (had the target produced it, it would have been accepted).
    4. decode:  K draft steps over all branches (k, candidate) of all sequences at once: branch tokens sit after
                the glue in the sequence's own cache slot, at index base + j * T + n for branch n's j-th token,
                with rope positions continuing the branch's prefix and a tree mask (prefix up to spec_k, then the
                branch's own tokens). The K tokens (and distributions) of each branch go into the cache.

Steps 2-4 run right after the answer is sent, i.e. while the target verifies the tokens it received.

The draft's KV cache follows the target's outcome for free: tokens [0, committed) are final; the glue tokens
sit at [committed, committed + n]. When the outcome (k, bonus) arrives, committed += 1 + k (the bonus and the
k accepted tokens are exactly the first glue entries) and the new bonus plus its K draft tokens become the
next glue, which rewrites the chosen branch's K/V contiguously after the prefix.
"""

from __future__ import annotations

import logging
import signal
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from paperclub.engine.kv_cache import slot_range
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams, filtered_probs, greedy_tokens, make_generator, sample
from paperclub.errors import UserError
from paperclub.models.draft import load_draft_model
from paperclub.models.llama import AttentionMeta
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.fanout import AdaptiveFanout
from paperclub.speculative.saguaro import cache_aware
from paperclub.speculative.speculation_cache import Speculation, SpeculationCache
from paperclub.speculative.transport import DRAFT, Channel, TransportError

log = logging.getLogger(__name__)


@dataclass
class DraftSeq:
    seq_id: int
    slot: int
    params: SamplingParams
    generator: torch.Generator
    committed: int  # tokens whose K/V in the draft cache are final
    pending: list[int]  # [bonus, spec_1..spec_n] handed to the target this round: the next glue
    after_miss: bool = True  # build this sequence's next cache with the miss fan-out


class DraftWorker:
    def __init__(self, runner: ModelRunner, config: SSDConfig):
        self.runner, self.config, self.k = runner, config, config.k
        self.seqs: dict[int, DraftSeq] = {}
        self.cache = SpeculationCache()
        self.fanout = AdaptiveFanout(config) if config.fanout == "adaptive" else None
        self._last_step: tuple[float, tuple[int, ...]] | None = None  # (sent, sequences) of the last step

    # ---- sequences come and go -------------------------------------------------------------------------------

    def add(self, new: list[dict]) -> list[DraftSeq]:
        """Prefill new prompts up to their last token, which becomes the glue of the first build."""
        added = []
        for r in new:
            prompt = r["prompt"]
            s = DraftSeq(r["id"], self.runner.cache.allocate(), r["params"], make_generator(r["seed"]),
                         committed=len(prompt) - 1, pending=[prompt[-1]])
            self.seqs[s.seq_id] = s
            added.append((s, prompt[:-1]))
        self._reserve(max(len(p) for _, p in added) + 1)
        rows = [(s, p) for s, p in added if p]
        if rows:
            self.runner.append([s.slot for s, _ in rows], [0] * len(rows), [p for _, p in rows], True)
        return [s for s, _ in added]

    def release(self, seq_ids: list[int]) -> None:
        for i in seq_ids:
            s = self.seqs.pop(i, None)
            if s is not None:
                self.runner.cache.release(s.slot)
                self.cache.drop(i)

    # ---- 1. serve the target's request -----------------------------------------------------------------------

    def serve(self, outcomes: list[tuple[int, int, int]], fallback: str) -> tuple[list[dict], torch.Tensor | None]:
        """Answer each (seq, k, bonus): rows {id, tokens, hit, fallback} and the stacked q of rows that have one."""
        rows: list[dict] = []
        qs: dict[int, torch.Tensor] = {}
        missed: list[DraftSeq] = []
        for seq_id, k, bonus in outcomes:
            s = self.seqs[seq_id]
            s.committed += 1 + k  # the old bonus and the k accepted glue tokens are final, in place
            spec = self.cache.take(seq_id, k, bonus)
            if spec is not None:
                s.pending, s.after_miss = [bonus, *spec.tokens], False
                rows.append({"id": seq_id, "tokens": spec.tokens, "hit": True, "fallback": None})
                if spec.q is not None:
                    qs[seq_id] = spec.q
            else:
                s.pending, s.after_miss = [bonus], True
                rows.append({"id": seq_id, "tokens": [], "hit": False, "fallback": fallback})
                missed.append(s)
        if missed and fallback == "jit":
            tokens, q = self._jit(missed)
            for i, s in enumerate(missed):
                s.pending = [s.pending[0], *tokens[i]]
                if q is not None and not s.params.greedy:
                    qs[s.seq_id] = q[i]
            by_id = {s.seq_id: t for s, t in zip(missed, tokens, strict=True)}
            for r in rows:
                if r["id"] in by_id:
                    r["tokens"] = by_id[r["id"]]
        order = [r["id"] for r in rows if r["id"] in qs]
        for r in rows:
            r["has_q"] = r["id"] in qs
        return rows, (torch.stack([qs[i] for i in order]) if order else None)

    def _jit(self, seqs: list[DraftSeq]) -> tuple[list[list[int]], torch.Tensor | None]:
        """The miss fallback: K plain autoregressive draft steps from each sequence's bonus token."""
        slots = [s.slot for s in seqs]
        starts = [s.committed for s in seqs]
        self._reserve(max(starts) + self.k + 1)
        chunks = [[s.pending[0]] for s in seqs]
        tokens, probs = [], []
        for _ in range(self.k):
            logits = self.runner.append(slots, starts, chunks, True)
            t, q = self._draw(logits, seqs)
            tokens.append(t)
            probs.append(q)
            starts = [a + 1 for a in starts]
            chunks = [[x] for x in t.tolist()]
        q = torch.stack(probs, 1) if probs[0] is not None else None
        return torch.stack(tokens, 1).tolist(), q

    # ---- 2-4. build the speculation cache for the round the target is verifying now -----------------------------

    def build(self, seqs: list[DraftSeq]) -> None:
        dists = self.glue_forward(seqs)
        branches = self.pick_bonus_candidates(seqs, dists)
        self.decode_branches(seqs, branches)

    def step_arrived(self, sent: float | None, outcomes: list[tuple[int, int, int]], fallback: str = "jit") -> None:
        """Time the round that just ended for the adaptive fan-out (`sent`: the target's clock, None after a
        prefill): counted only if the previous step was for the same sequences. With the jit fallback a hit and
        a miss emit the same tokens, so the unit is a sequence-round (less noisy than tokens); with the fast
        fallback a miss emits fewer, so the unit is a token."""
        ids = tuple(i for i, _, _ in outcomes)
        if self.fanout is not None and sent is not None and self._last_step is not None \
                and self._last_step[1] == ids:
            units = sum(k + 1 for _, k, _ in outcomes) if fallback == "fast" else len(outcomes)
            self.fanout.round_done(sent - self._last_step[0], units)
        self._last_step = None if sent is None else (sent, ids)

    def glue_forward(self, seqs: list[DraftSeq]) -> torch.Tensor:
        """2. One forward over each sequence's [bonus, spec_1..spec_n]: (B, n_max + 1, V) logits, row k = the
        draft's next-token logits if the target accepts k tokens."""
        self._reserve(max(s.committed + len(s.pending) for s in seqs))
        return self.runner.append([s.slot for s in seqs], [s.committed for s in seqs], [s.pending for s in seqs],
                                  False)

    def pick_bonus_candidates(self, seqs: list[DraftSeq], dists: torch.Tensor) -> list[list[tuple[int, int]]]:
        """3. Per sequence, the branches (k, bonus candidate) to decode."""
        out = []
        for b, s in enumerate(seqs):
            n = len(s.pending) - 1
            sizes = self.config.fanout_sizes(n, s.after_miss, self.fanout.level if self.fanout else None)
            best = dists[b, : n + 1].topk(min(max(sizes) + 1, dists.shape[-1]), dim=-1).indices.tolist()
            branches = []
            for k, size in enumerate(sizes):
                spec_next = s.pending[k + 1] if k < n else None  # would have been accepted, not a correction
                branches += [(k, c) for c in [c for c in best[k] if c != spec_next][:size]]
            out.append(branches)
        return out

    def decode_branches(self, seqs: list[DraftSeq], branches: list[list[tuple[int, int]]]) -> None:
        """4. K draft steps on every branch of every sequence, one forward per step; results go to the cache."""
        B, T, K = len(seqs), max(len(br) for br in branches), self.k
        dev = self.runner.device
        committed = torch.tensor([s.committed for s in seqs], device=dev)
        base = torch.tensor([s.committed + len(s.pending) for s in seqs], device=dev)  # first index after the glue
        ks = torch.tensor([[k for k, _ in br] + [0] * (T - len(br)) for br in branches], device=dev)  # pad: k = 0
        tokens = torch.tensor([[c for _, c in br] + [0] * (T - len(br)) for br in branches], device=dev)
        prefix_end = committed[:, None] + ks  # (B, T): last prefix index a branch sees (its bonus's parent)
        S_max = int(base.max()) + K * T
        self._reserve(S_max)
        mask = torch.arange(S_max, device=dev)[None, None, :] <= prefix_end[:, :, None]  # (B, T, S_max)
        slots = [s.slot for s in seqs]
        meta_slots = torch.tensor(slots, device=dev)
        rows = [s for s in seqs for _ in range(T)]
        col = torch.arange(T, device=dev)
        out_tokens, out_q = [], []
        for j in range(K):
            write = base[:, None] + j * T + col[None, :]  # (B, T)
            mask.scatter_(2, write[:, :, None], True)  # each branch token sees itself and its own ancestors
            S = int(base.max()) + (j + 1) * T
            meta = AttentionMeta(slots=meta_slots, write_index=write, kv_len=S, mask=mask[:, None, :, :S],
                                 slot_range=slot_range(slots))
            logits = self.runner.forward_meta(tokens, prefix_end + 1 + j, meta)  # (B, T, V)
            t, q = self._draw(logits.reshape(B * T, -1), rows)
            tokens = t.view(B, T)
            out_tokens.append(tokens)
            out_q.append(q.view(B, T, -1) if q is not None else None)
        drafted = torch.stack(out_tokens, 2).tolist()  # (B, T, K)
        q_all = torch.stack(out_q, 2) if out_q[0] is not None else None  # (B, T, K, V)
        for b, s in enumerate(seqs):
            for n, (k, c) in enumerate(branches[b]):
                q = None if q_all is None or s.params.greedy else q_all[b, n]
                self.cache.put(s.seq_id, k, c, Speculation(drafted[b][n], q))

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _draw(self, logits: torch.Tensor, seqs: list[DraftSeq]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One draft token per row (row i belongs to seqs[i]) and, unless all rows are greedy, the q it follows."""
        if all(s.params.greedy for s in seqs):
            return greedy_tokens(logits), None
        q = filtered_probs(logits, [s.params for s in seqs])
        if self.config.saguaro_c is not None:
            q = cache_aware(q, self.config.fanout_size, self.config.saguaro_c)
        return sample(q, [s.generator for s in seqs]), q

    def _reserve(self, capacity: int) -> None:
        self.runner.reserve(self.runner.cache.num_slots, capacity + 1)


def serve_forever(channel: Channel, worker: DraftWorker) -> None:
    """The draft process's main loop: one message at a time; after answering a step, build the next cache."""
    build_s, build_end = 0.0, time.monotonic()
    while True:
        msg, _ = channel.recv()  # no timeout: an idle engine is fine; a dead target closes the socket
        worker.release(msg.get("finished", []))
        if msg["kind"] == "stop":
            return
        if msg["kind"] == "add":
            seqs = worker.add(msg["seqs"])
            worker.step_arrived(None, [])  # the next round includes a prefill: not a plain round
        elif msg["kind"] == "step":
            t0 = time.monotonic()
            worker.step_arrived(msg["t_send"], msg["outcomes"], msg["fallback"])
            rows, q = worker.serve(msg["outcomes"], msg["fallback"])
            timing = {"serve_s": time.monotonic() - t0, "build_s": build_s, "build_end": build_end,
                      "fanout": worker.fanout.level if worker.fanout else None}
            channel.send({"kind": "answer", "rows": rows, "timing": timing}, [q] if q is not None else [])
            seqs = [worker.seqs[i] for i, _, _ in msg["outcomes"]]
            build_s = 0.0
        else:
            raise ValueError(f"unknown message kind {msg['kind']!r}")
        t0 = time.monotonic()
        worker.build(seqs)
        build_end = time.monotonic()
        build_s += build_end - t0


def draft_process_main(port: int, draft_dir: str, target_dir: str | None, config: SSDConfig, max_len: int) -> None:
    """Entry point of the spawned draft process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the target's to handle: it stops us
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(config.draft_threads)
    store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=timedelta(seconds=config.startup_timeout_s))
    store.set("draft_up", "1")
    channel = Channel.connect(store, DRAFT)
    try:
        model = load_draft_model(draft_dir, target_dir, config.draft_device, config.draft_dtype)
        extra = 2 * (config.k + 1) + config.k * config.max_branches + 8  # glue + branch tokens past a sequence
        worker = DraftWorker(ModelRunner(model, max_len + extra), config)
        cfg = model.cfg
        store.set("draft_answers", "1")  # the target waits for this where Ctrl-C can reach it, then reads "ready"
        channel.send({"kind": "ready", "vocab_size": cfg.vocab_size,
                      "max_position_embeddings": cfg.max_position_embeddings})
        serve_forever(channel, worker)
    except TransportError as e:
        log.warning("SSD draft process: the target is gone (%s); exiting", e)
    except Exception as e:  # report to the target, which raises it as a UserError
        if not isinstance(e, UserError):  # a bug: keep its traceback (bad input is the target's one line)
            log.error("SSD draft process failed: %s", traceback.format_exc())
        try:
            store.set("draft_answers", "1")
            channel.send({"kind": "error", "message": f"{type(e).__name__}: {e}"})
        except TransportError:
            pass
    finally:
        channel.close()
