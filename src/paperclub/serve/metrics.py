"""The server's Prometheus metrics, named as vLLM names its own (with a `paperclub:` prefix).

Each server owns its registry, so several servers (tests) can live in one process. Speculation counters follow
vLLM's spec-decode names: a draft is one round of K proposed tokens for one sequence, so
mean acceptance length = 1 + accepted / drafts (tokens per target forward).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paperclub.speculative.metrics import NGRAM_DRAFTS, PER_POS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                   2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"paperclub:{name}", doc, list(labels), registry=r).labels(**labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"paperclub:{name}", doc, list(labels), registry=r).labels(**labels)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"paperclub:{name}", doc, list(labels), buckets=LATENCY_BUCKETS,
                             registry=r).labels(**labels)

        self.running = gauge("num_requests_running", "sequences in the running batch")
        self.waiting = gauge("num_requests_waiting", "sequences waiting to join the running batch")
        self.prompt_tokens = counter("prompt_tokens", "prompt tokens admitted")
        self.generation_tokens = counter("generation_tokens", "tokens generated")
        self.time_to_first_token = histogram("time_to_first_token_seconds",
                                             "from a request's arrival to its first token")
        self.inter_token_latency = histogram("inter_token_latency_seconds",
                                             "time between two tokens of a sequence (a step's time over its tokens)")
        self.e2e_latency = histogram("e2e_request_latency_seconds", "from a request's arrival to its last token")
        self._finished = Counter("paperclub:request_success", "finished sequences by finish reason",
                                 ["model_name", "finished_reason"], registry=r)
        self._labels = labels
        self.num_drafts = counter("spec_decode_num_drafts", "speculative rounds (one per sequence per round)")
        self.num_draft_tokens = counter("spec_decode_num_draft_tokens", "draft tokens proposed")
        self.num_accepted_tokens = counter("spec_decode_num_accepted_tokens", "draft tokens accepted")
        self.num_ngram_drafts = counter("spec_decode_num_ngram_drafts",
                                        "drafts made by prompt lookup (n-gram) rather than the draft model")
        self._accepted_per_pos = Counter("paperclub:spec_decode_num_accepted_tokens_per_pos",
                                         "drafts whose token at this position was accepted",
                                         [*labels, "position"], registry=r)
        self.cache_hits = counter("ssd_speculation_cache_hits", "SSD rounds answered from the speculation cache")
        self.cache_misses = counter("ssd_speculation_cache_misses", "SSD rounds that missed the speculation cache")
        self.draft_fallbacks = counter("draft_fallbacks",
                                       "times the engine fell back to decoding without its draft (draft lost)")
        self.prefix_cache_queries = counter("prefix_cache_queries", "prompt tokens looked up in the prefix cache")
        self.prefix_cache_hits = counter("prefix_cache_hits",
                                         "prompt tokens whose K/V came from the prefix cache (not prefilled)")
        self.prefix_cache_bytes = gauge("prefix_cache_bytes", "memory held by the prefix cache")
        self._prefix_seen = (0, 0)

    def prefix_cache(self, queries: int, hits: int, nbytes: int) -> None:
        """The prefix cache's running totals (`engine.prefix_cache.PrefixCacheStats`)."""
        q0, h0 = self._prefix_seen
        if queries > q0:
            self.prefix_cache_queries.inc(queries - q0)
        if hits > h0:
            self.prefix_cache_hits.inc(hits - h0)
        self._prefix_seen = (queries, hits)
        self.prefix_cache_bytes.set(nbytes)

    def request_finished(self, reason: str, t_arrival: float) -> None:
        self._finished.labels(finished_reason=reason, **self._labels).inc()
        self.e2e_latency.observe(time.perf_counter() - t_arrival)

    def speculation(self, stats: dict, seen: dict) -> None:
        """Add what a sequence's speculation counters (`speculative.metrics`, and SSD's cache hits and misses)
        gained since `seen`."""
        for key, metric in (("num_drafts", self.num_drafts), ("num_draft_tokens", self.num_draft_tokens),
                            ("num_accepted_tokens", self.num_accepted_tokens),
                            (NGRAM_DRAFTS, self.num_ngram_drafts), ("hits", self.cache_hits),
                            ("misses", self.cache_misses)):
            gained = stats.get(key, 0) - seen.get(key, 0)
            if gained > 0:
                metric.inc(gained)
        before = seen.get(PER_POS, [])
        for pos, count in enumerate(stats.get(PER_POS, [])):
            gained = count - (before[pos] if pos < len(before) else 0)
            if gained > 0:
                self._accepted_per_pos.labels(position=str(pos), **self._labels).inc(gained)
