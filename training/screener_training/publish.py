"""`screener-publish`: upload a model package to a Hugging Face hub repo and print its registry entry.

The package is checked before anything is sent: every file must be safetensors, JSON or
Markdown (the model card), checksums.json must match the files, and the package must load. The upload uses
huggingface_hub's upload_folder. The printed entry pins the new commit and the SHA-256 of
every loaded file, ready for HUB_MODELS in ScreenerCore/registry.py or for a registry file
named in SCREENER_MODEL_REGISTRY.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from ScreenerCore.errors import ModelPackageError, ScreenerError
from ScreenerCore.hub.download import hub_endpoint
from ScreenerCore.package import (
    CHECKSUM_FILE,
    check_package_file_name,
    load_model_package,
    package_files,
    read_checksums,
    verify_checksums,
)
from ScreenerCore.registry import check_model_name, check_repo_id, hub_model_from_dict

logger = logging.getLogger("screener_training.publish")


def check_package(folder: Path) -> tuple[str, dict[str, str], list[str]]:
    """Check a package before upload; return its model name, the digests of its loaded files and the files to upload."""
    if not folder.is_dir():
        raise ModelPackageError(f"Model package folder '{folder}' not found.")
    upload = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_file():
            raise ModelPackageError(f"'{path}' is a folder; a model package contains only files. Move it out.")
        check_package_file_name(path.name, f"Model package folder '{folder}'")
        upload.append(path.name)
    if CHECKSUM_FILE not in upload:
        raise ModelPackageError(f"'{folder}' has no {CHECKSUM_FILE}; export the package again with screener-train.")

    checksums = read_checksums(folder)
    verify_checksums(folder, checksums)
    loaded = load_model_package(folder)
    required = package_files(loaded.config)
    missing = [name for name in required if name not in checksums]
    if missing:
        raise ModelPackageError(f"{folder / CHECKSUM_FILE} does not list {missing}; export the package again.")
    return loaded.config.name, {name: checksums[name] for name in required}, upload


def publish(folder: Path, repo_id: str, name: str | None = None, branch: str = "main", create_repo: bool = False,
            private: bool = False, token: str | None = None, message: str | None = None) -> dict:
    """Upload the package in `folder` to `repo_id` on `branch` and return the registry entry of the new commit."""
    model_name, digests, upload = check_package(folder)
    name = name or model_name
    check_model_name(name, f"screener-publish: model {name!r}")
    check_repo_id(repo_id, f"screener-publish: model {name!r}")

    api = HfApi(endpoint=hub_endpoint(), token=token)
    if create_repo:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, allow_patterns=upload,
                             commit_message=message or f"Upload Screener model package {model_name}")
    logger.info("Uploaded %s to %s (branch %s) as commit %s", ", ".join(upload), repo_id, branch, info.oid)
    entry = {"name": name, "repo_id": repo_id, "revision": info.oid, "sha256": digests,
             "description": f"{model_name} from {repo_id}"}
    hub_model_from_dict(entry, "screener-publish")
    return entry


def write_registry_file(path: Path, entry: dict) -> None:
    """Add `entry` to the registry file at `path` (created when missing), replacing an entry of the same name."""
    models = []
    if path.is_file():
        models = json.loads(path.read_text(encoding="utf-8")).get("models", [])
    models = [model for model in models if model.get("name") != entry["name"]] + [entry]
    path.write_text(json.dumps({"models": models}, indent=2) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="screener-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="model package folder written by screener-train")
    parser.add_argument("--repo-id", required=True, help="hub repo to upload to, OWNER/NAME")
    parser.add_argument("--name", default=None, help="registry name of the model (default: the name in config.json)")
    parser.add_argument("--branch", default="main", help="branch to commit to (default main)")
    parser.add_argument("--create-repo", action="store_true", help="create the repo first if it does not exist")
    parser.add_argument("--private", action="store_true", help="make a newly created repo private")
    parser.add_argument("--token", default=None,
                        help="hub access token with write permission (default: HF_TOKEN or the `hf auth login` token)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--registry-out", type=Path, default=None,
                        help="also add the entry to this registry JSON file (for SCREENER_MODEL_REGISTRY)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        entry = publish(args.folder, args.repo_id, name=args.name, branch=args.branch, create_repo=args.create_repo,
                        private=args.private, token=args.token, message=args.message)
    except ScreenerError as error:
        print(f"screener-publish: error: {error}", file=sys.stderr)
        return 2
    except HfHubHTTPError as error:
        print(f"screener-publish: error: the upload to '{args.repo_id}' failed: {error}", file=sys.stderr)
        return 2

    if args.registry_out is not None:
        write_registry_file(args.registry_out, entry)
    print(json.dumps(entry, indent=2))
    print(f"Pin this revision in the registry: {entry['revision']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
