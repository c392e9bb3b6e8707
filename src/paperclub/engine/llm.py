"""The public API: `LLM(...)`, `SamplingParams(...)`, `llm.generate(...)`, `llm.stream(...)`.

    from paperclub.engine import LLM, SamplingParams
    llm = LLM()                                   # the embedded default model
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=32))
    print(out[0].text, out[0].metrics["tokens_per_s"])
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from paperclub.device import resolve_device
from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.engine.sequence import Sequence as Seq
from paperclub.errors import UserError
from paperclub.models.draft import check_draft_compatible, default_draft_for, load_draft_model
from paperclub.models.draft_head import is_head_dir, load_head
from paperclub.models.loader import load_model
from paperclub.models.resolve import resolve_model
from paperclub.models.tokenizer import Tokenizer
from paperclub.nn.cpu_kernels import cpu_kernel
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.head_proposer import HeadProposer
from paperclub.speculative.ngram import CombinedProposer, NgramConfig, NgramProposer, parse_draft
from paperclub.speculative.sd import DraftProposer, SpeculativeDecoder
from paperclub.speculative.ssd import SSDDecoder
from paperclub.speculative.tree_proposer import TreeConfig, TreeProposer

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
Prompt = str | Chat | list[int]
DEFAULT_MAX_MODEL_LEN = 8192


@dataclass
class RequestOutput:
    index: int
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    # with SamplingParams(logprobs=n): per token, (its logprob, the n most likely (token id, logprob))
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16  # half the bytes per decode step; every CPU kernel build and recent GPU runs it
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, bfloat16 or float32")
    return DTYPES[dtype]


MODES = ("auto", "ar", "sd", "ssd")


def speculation_stats(seqs: list[Seq]) -> dict[str, float]:
    """The speculative counters and figures (`speculative.metrics`) over finished requests; {} without any."""
    totals = spec_metrics.total(s.stats for s in seqs)
    return spec_metrics.summary(totals) if totals["num_drafts"] else {}


class LLM:
    """An engine over one target model and, for speculative modes, one draft model.

    mode: "ar" (autoregressive), "sd" (speculative decoding with `draft`, K = `k`; with no draft given,
    "ngram+default": prompt lookup, and the shipped draft where nothing matches), "ssd" (speculative
    speculative decoding: the draft runs in its own process and pre-drafts the likely outcomes; `ssd_config`
    tunes fan-out, fallback and threads), or "auto": with a draft model given (DRAFT or ngram+DRAFT), a short
    calibration on this machine and the cost model (`speculative.auto`) pick AR, SD or SSD, K, and how SD drafts
    (the draft's chain, prompt lookup with the draft, or token trees), and log why (the choice is stored per
    machine); without one, AR. `auto_calibrate=False` keeps the old rule (SD when a draft is given, else AR).
    `draft_fallback`: when the SSD draft process is lost, go on decoding AR instead of failing the running requests
    (the server does).

    draft: a draft model (directory or name), or a feature draft head (`paperclub distill --arch head`, SD only);
    "ngram" for prompt-lookup drafting (no draft model, SD only);
    "ngram+DRAFT" for prompt lookup where the context has a match and the model DRAFT elsewhere ("ngram+default":
    the shipped draft). `ngram_config` sets the n-gram sizes (`speculative.ngram.NgramConfig`).
    `tree`: greedy requests verify a token tree each round (`speculative.tree`): several n-gram matches and the
    draft's chains from its top first tokens (`speculative.tree_proposer.TreeConfig`); sampled ones keep chains.

    prefix_cache_mb: memory for automatic prefix caching (`engine.prefix_cache`): prompts that start like an earlier
    prompt or conversation skip the prefill of the part already seen. Off (0) by default here, so that timings of
    repeated prompts include their prefill; `paperclub serve` turns it on."""

    def __init__(
        self,
        model: str | Path | None = None,
        draft: str | Path | None = None,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        mode: str = "auto",
        k: int = 5,
        max_num_seqs: int = 16,
        max_model_len: int | None = None,
        ssd_config: SSDConfig | None = None,
        draft_fallback: bool = False,
        ngram_config: NgramConfig | None = None,
        auto_calibrate: bool = True,
        prefix_cache_mb: float = 0.0,
        tree: TreeConfig | None = None,
    ):
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if k < 1:
            raise UserError(f"k (draft tokens per round) must be >= 1, got {k}")
        spec = parse_draft(None if draft is None else str(draft))
        if spec.ngram and mode == "ssd":
            raise UserError("n-gram drafting runs with --mode sd, not ssd: use --mode sd --draft ngram (or a model "
                            "draft with ssd)")
        self.model_dir = resolve_model(model)
        if mode == "sd" and draft is None:
            # prompt lookup, the shipped draft where nothing matches (SD's fastest measured); prompt lookup alone
            # for a target that ships no draft
            draft = "ngram+default" if default_draft_for(self.model_dir) is not None else "ngram"
            if draft == "ngram":
                log.info("mode sd: %s has no shipped draft, drafting by prompt lookup alone (--draft DIR for a "
                         "draft model)", self.model_dir)
            spec = parse_draft(draft)
        self.tokenizer = Tokenizer.from_dir(self.model_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        t0 = time.perf_counter()
        if self.device.type == "cpu":
            cpu_kernel()  # build/load the CPU kernels now, so the first generation's timing does not include it
        self.model = load_model(self.model_dir, self.device, self.dtype, max_positions=None)
        cfg = self.model.cfg
        self.max_model_len = min(max_model_len or DEFAULT_MAX_MODEL_LEN, cfg.max_position_embeddings)
        self.model.set_rope(self.max_model_len)
        log.info("loaded %s in %.1fs", self.model_dir, time.perf_counter() - t0)
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise UserError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}: "
                "the tokenizer does not belong to this model"
            )
        eos = set(cfg.eos_token_ids) | self.tokenizer.eos_token_ids
        ngram = spec.ngram and mode != "ar"
        pick = "sd" if spec.default_model and mode != "ar" else mode  # "ngram+default": the shipped draft
        use_model = spec.uses_model or not spec.ngram
        self.draft_dir = self._pick_draft(spec.model, pick, self.model_dir) if use_model else None
        head = self.draft_dir is not None and is_head_dir(self.draft_dir)  # a feature head: SD only
        if head and (mode == "ssd" or ngram):
            raise UserError(f"{self.draft_dir} is a draft head: it reads the target's hidden states every round, so "
                            "it drafts with --mode sd (not ssd) and without n-gram lookup")
        # auto calibrates only for a draft the caller named: a plain LLM() stays AR and starts without timing runs
        # (nor for a head yet: its calibration needs the target's states; auto runs it with SD)
        calibrate = (mode == "auto" and auto_calibrate and use_model and draft is not None and not head
                     and tree is None)
        self.mode = "ar" if self.draft_dir is None and not ngram else ("ssd" if mode == "ssd" else "sd")
        self.draft_name = ("ngram" + (f"+{self.draft_dir}" if self.draft_dir else "") if ngram
                           else str(self.draft_dir) if self.draft_dir else None)
        if prefix_cache_mb < 0:
            raise UserError(f"prefix_cache_mb must be >= 0 (0 turns prefix caching off), got {prefix_cache_mb}")
        target = ModelRunner(self.model, self.max_model_len, prefix_cache_mb=prefix_cache_mb)
        self.engine_config = EngineConfig(max_num_seqs=max_num_seqs, draft_fallback=draft_fallback)
        self.eos = eos
        self.auto_choice = None
        self._draft_runner = None
        if calibrate and self.draft_dir is not None:
            self.auto_choice = self._auto(target)
            self.mode, k = self.auto_choice.mode, self.auto_choice.k
            ngram = self.mode == "sd" and self.auto_choice.drafter in ("ngram+draft", "tree")
            tree = TreeConfig() if self.mode == "sd" and self.auto_choice.drafter == "tree" else None
            self.draft_name = f"ngram+{self.draft_dir}" if ngram else str(self.draft_dir)
            if self.mode == "ar":
                self.draft_dir = self.draft_name = None
                self.draft_model = None
            elif self.mode == "ssd":
                self._draft_runner = None  # the draft runs in its own process
                ssd_config = ssd_config or SSDConfig(k=k, draft_dtype=self.dtype)
        self.k = k
        if tree is not None and (self.mode != "sd" or head):
            raise UserError("token trees (--tree) draft with --mode sd, from a draft model and/or n-gram lookup "
                            f"(not {'a draft head' if head else 'mode ' + self.mode})")
        if ngram:
            decoder = SpeculativeDecoder(target, self._ngram_proposer(k, ngram_config, tree), k=k)
        elif self.mode == "ar":
            decoder = ARDecoder(target)
        elif self.mode == "ssd":
            config = ssd_config or SSDConfig(k=k, draft_dtype=self.dtype)
            decoder = SSDDecoder(target, self.draft_dir, self.model_dir, config)
        elif head:
            decoder = SpeculativeDecoder(target, self._load_head_proposer(k), k=k)
        else:
            runner = self._draft_runner_once()
            draft = runner if tree is None else TreeProposer(k, None, DraftProposer(runner, k), tree)
            decoder = SpeculativeDecoder(target, draft, k=k)
        self.engine = Engine(decoder, tokenizer=self.tokenizer, eos_token_ids=eos, config=self.engine_config)
        # After loading, the interpreter holds ~300k long-lived objects (mostly torch's modules and functions).
        # A full garbage collection walks all of them (0.1 s on a 2-core Xeon) and can fall in the middle of a
        # generation; frozen, they are skipped by every later collection. (vLLM does the same.)
        gc.collect()
        gc.freeze()

    def _auto(self, target: ModelRunner):
        """Calibrate (or reuse this machine's stored calibration) and let the cost model choose."""
        from paperclub.device import cpu_model
        from paperclub.models.draft import weights_digest
        from paperclub.nn.cpu_kernels import kernel_signature
        from paperclub.speculative import auto

        threads = torch.get_num_threads() if self.device.type == "cpu" else 0
        key = {"target": str(self.model_dir), "draft": str(self.draft_dir), "dtype": str(self.dtype),
               "draft_weights": weights_digest(self.draft_dir) if self.draft_dir is not None else None,
               "device": str(self.device), "threads": threads, "cpu": cpu_model(), "version": 2,
               "kernels": kernel_signature() if self.device.type == "cpu" else None}
        choice = auto.load(key)
        if choice is None:
            runner = self._draft_runner_once()

            def sd_engine(k: int, drafter: str) -> None:
                if drafter == "draft":
                    proposer = runner
                else:
                    proposer = self._ngram_proposer(k, None, TreeConfig() if drafter == "tree" else None)
                self.engine = Engine(SpeculativeDecoder(target, proposer, k=k), tokenizer=self.tokenizer,
                                     eos_token_ids=self.eos, config=self.engine_config)

            choice = auto.calibrate_and_choose(self, target, runner, max(threads, 1), sd_engine)
            auto.save(key, choice, {})
            how = "calibrated"
        else:
            how = "from the stored calibration"
        log.info("mode auto (%s): %s K=%d%s (%s)", how, choice.mode, choice.k,
                 f", drafting with {choice.drafter}" if choice.mode == "sd" else "", choice.reason)
        return choice

    def _draft_runner_once(self) -> ModelRunner:
        """The draft model's runner, loaded on first use (calibration and the chosen engine share it)."""
        if self._draft_runner is None:
            self._draft_runner = self._load_draft_runner()
        return self._draft_runner

    def _ngram_proposer(self, k: int, config: NgramConfig | None, tree: TreeConfig | None):
        """Prompt lookup, with the draft model (if any) where nothing matches, or in token trees."""
        proposer = NgramProposer(k, self.model.cfg.vocab_size, config)
        model = DraftProposer(self._draft_runner_once(), k) if self.draft_dir is not None else None
        if tree is not None:
            return TreeProposer(k, proposer, model, tree)
        return proposer if model is None else CombinedProposer(proposer, model)

    def _load_draft_runner(self) -> ModelRunner:
        self.draft_model = load_draft_model(self.draft_dir, self.model_dir, self.device, self.dtype, self.model)
        self.draft_model.set_rope(self.max_model_len)
        return ModelRunner(self.draft_model, self.max_model_len)

    def _load_head_proposer(self, k: int) -> HeadProposer:
        check_draft_compatible(self.draft_dir, self.model_dir)
        self.draft_model = load_head(self.draft_dir, self.model, self.device, self.dtype)
        self.draft_model.set_rope(self.max_model_len)
        return HeadProposer(self.draft_model, k, self.max_model_len)

    @staticmethod
    def _pick_draft(draft: str | Path | None, mode: str, target_dir: Path) -> Path | None:
        """The draft model's directory: `draft` if given; for sd and ssd without one, the target's shipped draft;
        none for AR (and for auto without a draft, which stays AR and starts without a calibration)."""
        if mode == "ar":
            return None
        if draft is not None:
            if Path(draft).is_dir():
                return Path(draft)
            try:
                return resolve_model(draft)
            except UserError as e:
                raise UserError(f"draft model {str(draft)!r} not found: pass --draft DIR, a draft saved by "
                                f"`paperclub distill` or a model with the target's tokenizer ({e})") from None
        if mode in ("sd", "ssd"):
            found = default_draft_for(target_dir)
            if found is None:
                raise UserError(f"mode {mode} needs a draft model: pass --draft DIR (a small model with the target's "
                                "tokenizer)")
            return found
        return None

    def close(self) -> None:
        """Stop the SSD draft process, if any (also done at interpreter exit)."""
        close = getattr(self.engine.decoder, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- prompts -------------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids for a raw text prompt, a chat ([{"role", "content"}], rendered with the model's chat
        template and the generation prompt) or a list of token ids (used as is)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt:
            return list(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            for m in prompt:
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise UserError('each chat message needs string "role" and "content" fields')
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        raise UserError("a prompt must be a string, a list of chat messages, or a list of token ids")

    @staticmethod
    def _as_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, list) and prompts and isinstance(prompts[0], dict | int):
            return [prompts]  # one chat, or one list of token ids
        return list(prompts)

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for every prompt (batched, continuous batching); outputs in input order.
        `self.last_stats` holds the aggregate: generated tokens, wall time, tokens/s (prefill included)."""
        items = self._as_list(prompts)
        plist = self._params_list(params, len(items))
        ids = [self.encode(p) for p in items]
        t0 = time.perf_counter()
        seqs = [self.engine.add_request(i, p) for i, p in zip(ids, plist, strict=True)]
        total = sum(p.max_tokens for p in plist)
        with tqdm(total=total, disable=not use_tqdm, unit="tok", desc="generate") as bar:
            while self.engine.has_unfinished():
                before = sum(len(s.output_ids) for s in seqs)
                self.engine.step()
                bar.update(sum(len(s.output_ids) for s in seqs) - before)
        wall = time.perf_counter() - t0
        n = sum(len(s.output_ids) for s in seqs)
        self.last_stats = {"generated_tokens": n, "wall_s": wall, "tokens_per_s": n / wall if wall else 0.0,
                           "mode": self.mode, **speculation_stats(seqs)}
        return [self._output(i, s) for i, s in enumerate(seqs)]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one generation piece by piece as it is produced."""
        seq = self.engine.add_request(self.encode(prompt), params or SamplingParams())
        emitted = 0
        try:
            while not seq.finished:
                self.engine.step()
                if len(seq.text) > emitted:
                    yield seq.text[emitted:]
                    emitted = len(seq.text)
        finally:
            if not seq.finished:  # the caller stopped early: drop the request
                self.engine.abort(seq)
        self.last_output = self._output(0, seq)

    @staticmethod
    def _params_list(params: Any, n: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams() for _ in range(n)]
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise UserError(f"got {len(params)} SamplingParams for {n} prompts: give one, or one per prompt")
        return params

    @staticmethod
    def _output(index: int, s: Seq) -> RequestOutput:
        return RequestOutput(index, s.text, list(s.output_ids), list(s.prompt_ids), s.finish_reason, s.metrics(),
                             list(s.logprobs) if s.params.logprobs is not None else None)
