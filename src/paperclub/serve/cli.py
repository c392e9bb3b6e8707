"""`paperclub serve` (the OpenAI-compatible server) and `paperclub loadtest` (concurrent streaming clients)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading

from paperclub.errors import UserError

log = logging.getLogger(__name__)

API_KEY_ENV = "PAPERCLUB_API_KEY"


def check_port(host: str, port: int) -> None:
    """Fail now, before the model loads, when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use: pick another with --port") from e
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from e


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from paperclub.engine.cli import make_llm
    from paperclub.serve.app import ServeConfig, Server, create_app
    from paperclub.serve.drain import DrainingServer

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_num_seqs < 1:
        raise UserError(f"--max-num-seqs must be >= 1, got {args.max_num_seqs}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_port(args.host, args.port)
    if args.prefix_cache_mb < 0:
        raise UserError(f"--prefix-cache-mb must be >= 0 (0 turns prefix caching off), got {args.prefix_cache_mb:g}")
    llm = make_llm(args, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, draft_fallback=True,
                   prefix_cache_mb=args.prefix_cache_mb)
    try:
        name = args.served_model_name or llm.model_dir.name
        server = Server(llm, ServeConfig(model_name=name, api_key=api_key, max_queue=args.max_queue))
        app = create_app(server, engine_thread=False)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=args.verbose > 0,
                                timeout_graceful_shutdown=args.drain_timeout, lifespan="on")
        uv = DrainingServer(config, server, args.drain_timeout)
        http = threading.Thread(target=uv.run, name="paperclub-http", daemon=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn installs handlers only in the main thread
            signal.signal(sig, uv.handle_exit)
        http.start()
        log.warning("serving %s (%s, mode %s) on http://%s:%d  (chat page at /, API at /v1)", name, llm.dtype,
                    llm.mode, args.host, args.port)
        server.loop.run()  # the engine in this, the main, thread until the app's shutdown stops it
        http.join()
    finally:
        llm.close()
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from paperclub.serve.loadtest import LoadTest, run_loadtest

    test = LoadTest(base_url=args.base_url, api_key=args.api_key or os.environ.get(API_KEY_ENV), model=args.model,
                    concurrency=args.concurrency, duration_s=args.duration, max_tokens=args.max_tokens,
                    prompts_file=args.prompts, num_prompts=args.num_prompts, max_requests=args.max_requests,
                    temperature=args.temperature, check_greedy=not args.no_check, ignore_eos=args.ignore_eos,
                    json_path=args.json)
    result = run_loadtest(test)
    print(f"{result['requests_ok']} ok, {result['requests_failed']} failed, {result['mismatched']} mismatched; "
          f"{result['output_tokens_per_s']:.1f} output tok/s; TTFT p50 {result['ttft_p50_s'] * 1e3:.0f} ms "
          f"p99 {result['ttft_p99_s'] * 1e3:.0f} ms; ITL p50 {result['itl_p50_s'] * 1e3:.1f} ms "
          f"p99 {result['itl_p99_s'] * 1e3:.1f} ms", file=sys.stderr)
    return 0 if result["requests_failed"] == 0 and result["mismatched"] == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    from paperclub.engine.cli import add_model_args

    s = sub.add_parser("serve", help="an OpenAI-compatible server with continuous batching and a chat page",
                       description="Serve the engine over HTTP: /v1/models, /v1/completions, /v1/chat/completions "
                                   "(streamed or not), /health, /metrics (Prometheus) and a chat page at /.")
    add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` (or set ${API_KEY_ENV})")
    s.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together (default 64)")
    s.add_argument("--max-queue", type=int, default=256,
                   help="sequences that may wait beyond the running batch; more get 429 (default 256)")
    s.add_argument("--max-model-len", type=int, default=None, help="context length (default: the engine's)")
    s.add_argument("--prefix-cache-mb", type=float, default=64.0,
                   help="memory for the K/V of earlier prompts and replies that new prompts start with (system "
                        "prompts, earlier turns of a chat): that part of a prompt is not prefilled again (default "
                        "64; 0 turns it off)")
    s.add_argument("--served-model-name", default=None, help="the model id clients use (default: the model's name)")
    s.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds in-flight requests get to finish after SIGTERM (default 300)")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("loadtest", help="N concurrent streaming clients against a server (loopback only)",
                       description="Stream chat completions from N concurrent clients for a fixed time and report "
                                   "throughput, time to first token and inter-token latency percentiles.")
    t.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1 (loopback addresses only)")
    t.add_argument("--api-key", default=None)
    t.add_argument("--model", default=None, help="model id (default: the server's first)")
    t.add_argument("--concurrency", type=int, required=True, help="concurrent streaming clients")
    t.add_argument("--duration", type=float, required=True, help="seconds to keep starting requests")
    t.add_argument("--max-tokens", type=int, required=True, help="max_tokens of each request")
    t.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests in all")
    t.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default; checked for mismatches)")
    t.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens per request")
    t.add_argument("--prompts", default=None, help='JSONL: {"prompt": ...} or {"messages": [...]} per line '
                                                   "(default: the engine's held-out chat prompts)")
    t.add_argument("--num-prompts", type=int, default=16,
                   help="distinct prompts, sent in turn; each greedy one is first generated alone (default 16)")
    t.add_argument("--no-check", action="store_true", help="skip the greedy mismatch check")
    t.add_argument("--json", default=None, help="write the result here")
    t.set_defaults(func=cmd_loadtest)
