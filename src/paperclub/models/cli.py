"""`paperclub models ...`: list, fetch, convert and inspect model directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paperclub.errors import UserError


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def cmd_list(args: argparse.Namespace) -> int:
    from paperclub.models.store import list_models, models_dir

    models = list_models()
    if not models:
        print(f"no models cached in {models_dir()}; run `paperclub models fetch` for the default one")
        return 0
    rows = [("NAME", "ARCH", "PARAMS", "DTYPE", "SIZE", "PATH")]
    for m in models:
        status = "" if m.complete else f"  (incomplete: {m.problem})"
        rows.append(
            (m.name, m.architecture, _params(m.parameters), m.dtype, _size(m.size_bytes), f"{m.path}{status}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from paperclub.models.default_model import ensure_default_model

    path = ensure_default_model(progress=not args.quiet)
    print(path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from paperclub.models.gguf_convert import convert_gguf

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; choose another --out or pass --force to replace it")
    result = convert_gguf(args.gguf, out, force=args.force, progress=not args.quiet)
    print(
        f"converted {args.gguf} -> {result.out_dir} ({_size(result.bytes_written)}, {result.seconds:.1f} s)"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from paperclub.models.store import dir_size, models_dir, validate_model_dir

    path = Path(args.model).expanduser()
    if not path.is_dir() and (models_dir() / args.model).is_dir():
        path = models_dir() / args.model
    config = validate_model_dir(path)
    if args.json:
        print(json.dumps(json.loads((path / "config.json").read_text()), indent=2))
        return 0
    fields = [
        ("path", str(path.resolve())),
        ("architecture", config.model_type),
        ("parameters", f"{_params(config.num_parameters)} ({config.num_parameters:,})"),
        ("dtype", config.torch_dtype),
        ("layers", config.num_hidden_layers),
        ("hidden size", config.hidden_size),
        ("heads (q / kv)", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("head dim", config.head_dim),
        ("ffn size", config.intermediate_size),
        ("vocab size", config.vocab_size),
        ("context length", config.max_position_embeddings),
        ("rope theta", config.rope_theta),
        ("rms norm eps", config.rms_norm_eps),
        ("tied embeddings", config.tie_word_embeddings),
        ("bos / eos", f"{config.bos_token_id} / {config.eos_token_id}"),
        ("size on disk", _size(dir_size(path))),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        print(f"{k.ljust(width)}  {v}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list, fetch, convert and inspect models")
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("list", help="models cached in $PAPERCLUB_HOME/models")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fetch", help="download and convert the default model (SmolLM2-135M-Instruct)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("convert", help="convert a .gguf file into a Hugging Face model directory")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("--out", required=True, help="the directory to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("show", help="summarise a model directory's configuration")
    p.add_argument("model", metavar="DIR_OR_NAME", help="a model directory or a cached model's name")
    p.add_argument("--json", action="store_true", help="print config.json as is")
    p.set_defaults(func=cmd_show)
