"""`screener models`, `screener download NAME` and `screener cache info|clear`: the models and their cache."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ScreenerError
from ..hub import CACHE_DIR_ENV, clear_cache, fetch_model, resolve_cache_dir, summarize_cache
from ..registry import list_models, parse_model_spec

CACHE_DIR_HELP = f"model cache folder (default: ${CACHE_DIR_ENV}, else <user cache>/screener/hub)"


def format_size(size_bytes: int) -> str:
    """Format a byte count with decimal units (1 KB = 1000 B)."""
    if size_bytes < 1000:
        return f"{size_bytes} B"
    size = size_bytes / 1000
    for unit in ("KB", "MB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def run_models(args: argparse.Namespace) -> int:
    models = list_models(args.cache_dir)
    if args.json:
        rows = [{"name": m.name, "source": m.source, "cached": m.cached, "repo_id": m.repo_id,
                 "revision": m.revision, "folder": str(m.folder) if m.folder else None,
                 "description": m.description} for m in models]
        print(json.dumps(rows, indent=2))
        return 0

    if not models:
        print("No models are registered.", file=sys.stderr)
    else:
        width = max(len(m.name) for m in models)
        print(f"{'NAME':<{width}}  SOURCE   CACHED  LOCATION")
        for m in models:
            location = str(m.folder) if m.folder else f"{m.repo_id}@{m.revision}"
            print(f"{m.name:<{width}}  {m.source:<7}  {'yes' if m.cached else 'no':<6}  {location}")
    print(f"Model cache: {resolve_cache_dir(args.cache_dir)}", file=sys.stderr)
    return 0


def run_download(args: argparse.Namespace) -> int:
    parsed = parse_model_spec(args.model)
    if parsed.hub is None:
        kind = "bundled with Screener" if parsed.bundled else "a local folder"
        print(f"'{args.model}' is {kind}; there is nothing to download.", file=sys.stderr)
        print(parsed.folder)
        return 0
    folder, digests = fetch_model(parsed.hub, args.cache_dir)
    print(f"Verified the SHA-256 of {len(digests)} files of the {parsed.hub.label}.", file=sys.stderr)
    print(folder)
    return 0


def run_cache_info(args: argparse.Namespace) -> int:
    summary = summarize_cache(args.cache_dir)
    print(f"Model cache: {summary.folder}")
    if not summary.exists:
        print("  (empty: the folder does not exist yet)")
        return 0
    print(f"  size: {format_size(summary.size_bytes)}, writable: {'yes' if summary.writable else 'no'}")
    names = {}
    for model in list_models(args.cache_dir):
        if model.repo_id:
            names.setdefault((model.repo_id, model.revision), []).append(model.name)
    for repo in summary.repos:
        print(f"  {repo.repo_id}  {format_size(repo.size_bytes)}")
        for revision in repo.revisions:
            label = ", ".join(names.get((repo.repo_id, revision), []))
            print(f"    {revision}" + (f"  ({label})" if label else ""))
    for warning in summary.warnings:
        print(f"  warning: {warning}")
    return 0


def run_cache_clear(args: argparse.Namespace) -> int:
    repo_ids = None
    if args.model:
        repo_ids = []
        for spec in args.model:
            parsed = parse_model_spec(spec)
            if parsed.hub is None:
                raise ScreenerError(f"'{spec}' is not a hub model, so it is not in the cache.")
            repo_ids.append(parsed.hub.repo_id)

    folder = resolve_cache_dir(args.cache_dir)
    what = ", ".join(repo_ids) if repo_ids else "every cached model"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ScreenerError(f"Refusing to delete {what} from '{folder}' without confirmation; pass --yes.")
        answer = input(f"Delete {what} from '{folder}'? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.", file=sys.stderr)
            return 1

    removed = clear_cache(folder, repo_ids)
    if removed:
        print(f"Deleted {', '.join(removed)} from {folder}")
    else:
        print(f"Nothing to delete in {folder}")
    return 0


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the known models and whether they are cached",
                                   description="List the bundled and hub models that --model NAME can load, "
                                               "and whether each is on this machine. Makes no network request.")
    models.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    models.add_argument("--json", action="store_true", help="print the list as JSON")
    models.set_defaults(handler=run_models)

    download = subparsers.add_parser("download", help="download and verify a hub model into the cache",
                                     description="Download a model's files into the cache and check each "
                                                 "file's SHA-256, so later runs work offline. Prints the folder.")
    download.add_argument("model", help="registered model name, or OWNER/NAME@COMMIT of a hub repo")
    download.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    download.set_defaults(handler=run_download)

    cache = subparsers.add_parser("cache", help="show or clear the model cache",
                                  description="Show the contents of the model cache, or delete cached models.")
    actions = cache.add_subparsers(dest="cache_action", required=True)
    info = actions.add_parser("info", help="show the cache folder, its size and the cached models")
    info.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    info.set_defaults(handler=run_cache_info)
    clear = actions.add_parser("clear", help="delete cached models")
    clear.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    clear.add_argument("--model", action="append", default=None,
                       help="delete only this model (name or OWNER/NAME@REVISION); repeat for several")
    clear.add_argument("--yes", action="store_true", help="delete without asking for confirmation")
    clear.set_defaults(handler=run_cache_clear)
