"""`paperclub generate`, `paperclub chat` and `paperclub demo`: the inference engine from the shell."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from paperclub.atomic import check_writable, write_json
from paperclub.errors import UserError

DEMO_PROMPTS = [
    [{"role": "user", "content": "Explain in two sentences why the sky is blue."}],
    [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
    [{"role": "user", "content": "What is 17 * 23? Show your steps."}],
]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF model directory, .gguf file or cached name (default: embedded)")
    p.add_argument("--mode", default="auto", choices=["auto", "ar", "sd", "ssd"],
                   help="decoding algorithm (auto: when --draft names a draft model, a short calibration and the "
                        "cost model pick ar, sd or ssd, K, and how sd drafts; without --draft, ar)")
    p.add_argument("--draft", default=None,
                   help="draft model (a directory or name; default: the target's shipped draft, for sd together "
                        "with prompt lookup); default: the shipped draft; ngram: prompt-lookup drafting, no draft "
                        "model; ngram+DRAFT: prompt lookup where the context has a match, the model DRAFT "
                        "elsewhere (ngram+default: the shipped draft, what --mode sd uses when --draft is not given; "
                        "ngram where the target ships no draft)")
    p.add_argument("--prompt-lookup-min", type=int, default=None,
                   help="with --draft ngram: shortest n-gram to match (default 1)")
    p.add_argument("--prompt-lookup-max", type=int, default=None,
                   help="with --draft ngram: longest n-gram to match, tried first (default 3)")
    p.add_argument("--k", type=int, default=5, help="draft tokens per round (sd, ssd)")
    p.add_argument("--tree", action="store_true",
                   help="with --mode sd: greedy requests verify a token tree each round, several n-gram matches "
                        "(with --draft ngram+DRAFT or ngram) and the draft's chains from its top first tokens")
    p.add_argument("--tree-ngram", type=int, default=None, help="with --tree: n-gram guesses per round (default 3)")
    p.add_argument("--tree-width", type=int, default=None,
                   help="with --tree: the draft's first tokens to branch on (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="weights/activations")
    g = p.add_argument_group("SSD (with --mode ssd)")
    # defaults (None) are SSDConfig's: it stays the one place they are written
    g.add_argument("--fanout", default=None, choices=["uniform", "geometric", "adaptive"],
                   help="how many bonus tokens to pre-draft per accepted length: uniform F, spread like the "
                        "outcome probabilities, or the F in 1..--fanout-size that decodes fastest on this machine, "
                        "timed while decoding (default adaptive)")
    g.add_argument("--fanout-size", type=int, default=None,
                   help="F: candidates per accepted length (the cap for geometric)")
    g.add_argument("--miss-fanout", type=int, default=None, help="candidates per length right after a miss")
    g.add_argument("--fallback", default=None, choices=["auto", "jit", "fast"],
                   help="on a cache miss: jit drafts now, fast emits the bonus token only, auto (default) picks by "
                        "batch size")
    g.add_argument("--saguaro-c", type=float, default=None,
                   help="cache-aware sampling: scale the draft's top-F probabilities by C in (0, 1) (default off)")
    g.add_argument("--draft-threads", type=int, default=None, help="torch threads of the draft process")
    g.add_argument("--target-threads", type=int, default=None,
                   help="torch threads of the target while SSD runs (default: the cores left to it by the draft)")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace):
    from paperclub.engine.sampling import SamplingParams

    # checked here too so that a message names the flag typed, not SamplingParams' field
    for ok, message in [
        (args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
        (args.temperature >= 0, f"--temperature must be >= 0, got {args.temperature}"),
        (args.top_k >= 0, f"--top-k must be >= 0 (0 = off), got {args.top_k}"),
        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (all(args.stop), "--stop must not be empty"),
    ]:
        if not ok:
            raise UserError(message)
    return SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, stop=list(args.stop))


SSD_FLAGS = ("fanout", "fanout_size", "miss_fanout", "fallback", "saguaro_c", "draft_threads", "target_threads")


def ssd_config(args: argparse.Namespace):
    from paperclub.engine.llm import resolve_dtype
    from paperclub.speculative.config import SSDConfig

    given = {name: getattr(args, name) for name in SSD_FLAGS if getattr(args, name) is not None}
    try:
        return SSDConfig(k=args.k, draft_dtype=resolve_dtype(args.dtype), **given)
    except UserError as e:  # SSDConfig names its fields; the user typed flags
        message = str(e)
        for name in (*SSD_FLAGS, "k"):
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", "--" + name.replace("_", "-"), message)
        raise UserError(message) from None


def make_llm(args: argparse.Namespace, **kwargs: Any):
    from paperclub.engine.llm import LLM

    config = ssd_config(args)  # validated whatever the mode: a bad option is an error, not silently unused
    return LLM(model=args.model, draft=args.draft, mode=args.mode, k=args.k, device=args.device, dtype=args.dtype,
               ssd_config=config, ngram_config=ngram_config(args), tree=tree_config(args), **kwargs)


def tree_config(args: argparse.Namespace):
    from paperclub.speculative.tree_proposer import TreeConfig

    given = {name: v for name, flag in (("ngram_candidates", "tree_ngram"), ("draft_width", "tree_width"))
             if (v := getattr(args, flag, None)) is not None}
    if given and not getattr(args, "tree", False):
        raise UserError("--tree-ngram and --tree-width shape a token tree: add --tree")
    if not getattr(args, "tree", False):
        return None
    for name, v in given.items():
        if v < 0:
            raise UserError(f"--tree-{'ngram' if name == 'ngram_candidates' else 'width'} must be >= 0, got {v}")
    return TreeConfig(**given)


def ngram_config(args: argparse.Namespace):
    from paperclub.speculative.ngram import NgramConfig

    given = {name: getattr(args, name) for name in ("prompt_lookup_min", "prompt_lookup_max")
             if getattr(args, name, None) is not None}
    try:
        return NgramConfig(**given)
    except UserError as e:  # NgramConfig names its fields; the user typed flags
        message = re.sub(r"(?<![\w-])prompt_lookup_(min|max)", lambda m: f"--prompt-lookup-{m.group(1)}", str(e))
        raise UserError(message) from None


def read_prompts_jsonl(path: str) -> list[Any]:
    """Each line: {"prompt": "raw text"} or {"messages": [{"role": ..., "content": ...}, ...]}."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file {path} not found")
    prompts: list[Any] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}): each line must be one JSON object") from e
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            prompts.append(obj["prompt"])
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
            msgs = obj["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                       and isinstance(m.get("content"), str) for m in msgs):
                raise UserError(f'{path}:{n}: every message needs string "role" and "content" fields')
            prompts.append(msgs)
        else:
            raise UserError(f'{path}:{n}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    prompts: list[Any] = list(args.prompt)
    if args.prompts:
        prompts += read_prompts_jsonl(args.prompts)
    if not prompts:
        raise UserError("give a prompt, or --prompts FILE.jsonl")
    if args.json:
        check_writable(args.json, "--json")  # before the model loads, not after the generation
    params = sampling_params(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    llm = make_llm(args, max_num_seqs=args.batch_size)
    if len(prompts) == 1 and not args.json and not args.no_stream:
        for piece in llm.stream(prompts[0], params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        m = llm.last_output.metrics
        print(f"\n[{m['generated_tokens']} tokens, {m['tokens_per_s']:.1f} tok/s, "
              f"{finish_note(llm.last_output, params.max_tokens)}]", file=sys.stderr)
        return 0
    outputs = llm.generate(prompts, params, use_tqdm=sys.stderr.isatty())
    stats = llm.last_stats
    if args.json:
        write_json(args.json, {
            "target": str(llm.model_dir),
            "draft": llm.draft_name,  # a directory, "ngram" or "ngram+DIR"
            "mode": llm.mode,
            "outputs": [{"token_ids": o.token_ids, "text": o.text, "finish_reason": o.finish_reason}
                        for o in outputs],
            "tokens_per_s": stats["tokens_per_s"],
        })
    else:
        for o in outputs:
            print(f"--- [{o.index}] ({len(o.token_ids)} tokens, {finish_note(o, params.max_tokens)})\n{o.text}")
    for o in outputs:
        if o.finish_reason == "context":
            print(f"note: prompt {o.index} stopped at the context limit after {len(o.token_ids)} of "
                  f"{params.max_tokens} tokens (shorten the prompt or pass a smaller --max-new-tokens)",
                  file=sys.stderr)
    print(f"[{stats['generated_tokens']} tokens in {stats['wall_s']:.2f}s: {stats['tokens_per_s']:.1f} tok/s]",
          file=sys.stderr)
    return 0


def finish_note(output, max_tokens: int) -> str:
    """Why a generation stopped, in words: stop (EOS or a stop string), length, or the context limit."""
    n = len(output.token_ids)
    return {"stop": "stopped", "length": f"reached --max-new-tokens {max_tokens}",
            "context": f"context window full after {n} of {max_tokens} tokens"}.get(output.finish_reason,
                                                                                  str(output.finish_reason))


def fit_history(llm, history: list[dict[str, str]], max_new_tokens: int) -> tuple[list[dict[str, str]], int]:
    """The longest suffix of the conversation (the system message kept) whose prompt leaves room for
    `max_new_tokens`, and how many messages were dropped; a UserError if the last message alone does not fit."""
    system = history[:1] if history and history[0]["role"] == "system" else []
    turns = history[len(system):]
    for start in range(len(turns)):
        if turns[start]["role"] != "user":
            continue  # a conversation restarts at a user message
        kept = system + turns[start:]
        n = len(llm.encode(kept))
        if n + max_new_tokens <= llm.engine.room_for(0):
            return kept, start
    n = len(llm.encode(system + turns[-1:]))
    raise UserError(f"this message is {n} tokens with the prompt around it, and with --max-new-tokens "
                    f"{max_new_tokens} it does not fit the {llm.max_model_len}-token context: send a shorter one")


CHAT_PREFIX_CACHE_MB = 64.0


def cmd_chat(args: argparse.Namespace) -> int:
    # every turn resends the conversation: with a prefix cache only the new message and the reply are prefilled
    llm = make_llm(args, max_num_seqs=1, prefix_cache_mb=CHAT_PREFIX_CACHE_MB)
    params = sampling_params(args)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    print("paperclub chat: type a message; /reset clears the history, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        try:
            kept, dropped = fit_history(llm, history + [{"role": "user", "content": line}], params.max_tokens)
        except UserError as e:  # this message only: the conversation goes on
            print(f"error: {e}", file=sys.stderr)
            continue
        if dropped:
            print(f"(the conversation outgrew the context: the {dropped} oldest messages are left out)",
                  file=sys.stderr)
        history = kept
        sys.stdout.write("assistant> ")
        reply = []
        for piece in llm.stream(history, params):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        out = llm.last_output
        m = out.metrics
        print(f"\n  [{m['generated_tokens']} tokens, {m['tokens_per_s']:.1f} tok/s, "
              f"{finish_note(out, params.max_tokens)}]", file=sys.stderr)
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.mode == "auto" and args.draft is None:
        args.draft = "default"  # auto weighs speculation with the shipped draft here (calibrated once per machine)
    llm = make_llm(args, max_num_seqs=1)
    print(f"model: {llm.model_dir} ({llm.dtype}, {llm.device}), loaded in {time.perf_counter() - t0:.1f}s")
    print(f"decoding: {describe_decoding(llm)}\n")
    params = sampling_params(args)
    total_tokens, total_time = 0, 0.0
    for chat in DEMO_PROMPTS:
        print(f"user> {chat[-1]['content']}\nassistant> ", end="", flush=True)
        for piece in llm.stream(chat, params):
            print(piece, end="", flush=True)
        m = llm.last_output.metrics
        total_tokens += int(m["generated_tokens"])
        total_time += m["elapsed_s"]
        print(f"\n  [{m['generated_tokens']} tokens, {m['tokens_per_s']:.1f} tok/s]\n")
    print(f"overall: {total_tokens} tokens in {total_time:.1f}s = {total_tokens / total_time:.1f} tok/s")
    return 0


def describe_decoding(llm) -> str:
    """One line: the mode, K and drafter, and for auto the cost model's reason."""
    draft = llm.draft_name or ""
    if llm.draft_dir is not None:
        draft = draft.replace(str(llm.draft_dir), Path(llm.draft_dir).name)
    text = llm.mode.upper() if llm.mode == "ar" else f"{llm.mode.upper()} K={llm.k}, draft {draft}"
    if llm.auto_choice is not None:
        text += f" (picked by --mode auto: {llm.auto_choice.reason.split(' (')[0]})"
    return text


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate text (AR or speculative decoding)",
                       description="Generate completions for prompts given on the command line or in a JSONL file.")
    g.add_argument("prompt", nargs="*", help="raw text prompt(s)")
    g.add_argument("--prompts", help='JSONL file: {"prompt": ...} or {"messages": [...]} per line')
    g.add_argument("--json", help="write {target, outputs, tokens_per_s} to this file")
    g.add_argument("--batch-size", type=int, default=16, help="max sequences decoded together (default 16)")
    g.add_argument("--no-stream", action="store_true", help="do not stream a single prompt's output")
    add_model_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive streaming chat")
    c.add_argument("--system", default=None, help="system prompt")
    add_model_args(c)
    add_sampling_args(c, max_new_tokens=512)
    c.set_defaults(func=cmd_chat)

    d = sub.add_parser("demo", help="the main job: stream answers to sample prompts and print tokens/s")
    add_model_args(d)
    add_sampling_args(d)
    d.set_defaults(func=cmd_demo)
