"""The `paperclub` command: one sub-command (group) per system.

Each system module exposes `register(subparsers)`, which adds its parsers and sets `func` on them.
`func(args)` returns an exit code. A `UserError` anywhere becomes a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from paperclub.errors import UserError

# Every system's CLI module; its `register` adds the actual sub-commands.
SYSTEMS = [
    "paperclub.models.cli",
    "paperclub.engine.cli",
    "paperclub.distill.cli",
    "paperclub.bench.cli",
    "paperclub.serve.cli",
    "paperclub.worldmodel.cli",
    "paperclub.bounds.cli",
    "paperclub.dmpc.cli",
    "paperclub.scaling.cli",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors also exit 2, on one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="paperclub", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SYSTEMS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not name.startswith(e.name or "\0"):  # the system itself is absent, not one of its imports
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"paperclub {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ssd = sys.modules.get("paperclub.speculative.ssd")  # loaded only if SSD ran
        if ssd is not None:
            ssd.kill_drafts()
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
