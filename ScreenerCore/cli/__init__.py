"""The `screener` command line. Each subcommand lives in its own module with a register(subparsers)."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import ScreenerError
from . import evaluate, models, predict
from .predict import JsonLinesReporter

# Modules whose register(subparsers) adds a subcommand; each sets `handler` in its defaults.
SUBCOMMANDS = [predict, evaluate, models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="screener", description="Self-supervised anomaly maps for 3D CT.")
    parser.add_argument("--version", action="version", version=f"screener {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # huggingface_hub's HTTP client (httpx2 in huggingface_hub 2.x) logs every request at INFO.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except (ScreenerError, ValueError) as error:
        if getattr(args, "progress", None) == "jsonl":
            JsonLinesReporter().emit("error", message=str(error))
        print(f"screener: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("screener: cancelled", file=sys.stderr)
        return 130
