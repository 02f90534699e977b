"""The cache folder of downloaded model packages, and functions to inspect and clear it.

The cache uses the Hugging Face hub cache layout (models--owner--name/blobs, snapshots, refs),
so `huggingface_hub` reads and writes it, but it lives in a folder of Screener's own under the
user's cache directory. Clearing it therefore never touches other programs' models.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import scan_cache_dir
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

from ..errors import ScreenerError

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "SCREENER_CACHE_DIR"


def user_cache_root() -> Path:
    """Return the platform's per-user cache directory (XDG on Linux, Library/Caches on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def default_cache_dir() -> Path:
    """Return the cache folder: $SCREENER_CACHE_DIR when set, else <user cache>/screener/hub."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return user_cache_root() / "screener" / "hub"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Return `cache_dir` as an absolute path, or the default cache folder when it is None."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder.resolve()


def repo_cache_folder(cache_dir: Path, repo_id: str) -> Path:
    """Return the folder of a model repo inside the cache (models--owner--name)."""
    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


def is_shared_hub_cache(folder: Path) -> bool:
    """Return True when `folder` is the Hugging Face cache that other programs share (HF_HUB_CACHE)."""
    return folder.resolve() == Path(hub_constants.HF_HUB_CACHE).expanduser().resolve()


@dataclass
class CachedRepo:
    """One hub repo in the cache: its id, the cached commits and their size on disk in bytes."""

    repo_id: str
    revisions: list[str]
    size_bytes: int
    folder: Path


@dataclass
class CacheSummary:
    """Contents of the cache folder: its repos, total size and scan warnings."""

    folder: Path
    exists: bool
    writable: bool
    size_bytes: int = 0
    repos: list[CachedRepo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def summarize_cache(cache_dir: str | os.PathLike | None = None) -> CacheSummary:
    """Scan the cache folder with huggingface_hub's scan_cache_dir, without writing to it."""
    folder = resolve_cache_dir(cache_dir)
    if not folder.is_dir():
        return CacheSummary(folder=folder, exists=False, writable=_parent_writable(folder))
    summary = CacheSummary(folder=folder, exists=True, writable=os.access(folder, os.W_OK))
    try:
        info = scan_cache_dir(folder)
    except (CacheNotFound, CorruptedCacheException) as error:
        raise ScreenerError(f"Cannot read the model cache '{folder}': {error}. Delete the folder or pass "
                            "--cache-dir with another folder.") from error
    summary.size_bytes = info.size_on_disk
    summary.warnings = [str(warning) for warning in info.warnings]
    for repo in sorted(info.repos, key=lambda item: item.repo_id):
        if repo.repo_type != "model":
            continue
        revisions = sorted(revision.commit_hash for revision in repo.revisions)
        summary.repos.append(CachedRepo(repo_id=repo.repo_id, revisions=revisions, size_bytes=repo.size_on_disk,
                                        folder=repo.repo_path))
    return summary


def clear_cache(cache_dir: str | os.PathLike | None = None, repo_ids: list[str] | None = None) -> list[str]:
    """Delete cached repos (all, or those in `repo_ids`) and return the ids of the repos removed.

    Raises ScreenerError when asked to clear all of the shared Hugging Face cache, because that
    folder also contains other programs' models.
    """
    folder = resolve_cache_dir(cache_dir)
    if repo_ids is None and is_shared_hub_cache(folder):
        raise ScreenerError(f"'{folder}' is the shared Hugging Face cache; clearing all of it would also delete "
                            "other programs' models. Name the models to remove with --model.")
    summary = summarize_cache(folder)
    selected = [repo for repo in summary.repos if repo_ids is None or repo.repo_id in repo_ids]
    if not selected:
        return []

    revisions = [revision for repo in selected for revision in repo.revisions]
    info = scan_cache_dir(folder)
    strategy = info.delete_revisions(*revisions)
    logger.info("Deleting %d cached revision(s) from %s, freeing %s", len(revisions), folder,
                strategy.expected_freed_size_str)
    # execute() logs and skips paths it cannot delete, so what is left over is checked afterwards.
    strategy.execute()
    left_over = [str(repo.folder) for repo in selected if repo.folder.exists()]
    if left_over:
        raise ScreenerError(f"Could not delete {', '.join(left_over)}: permission denied or the folder is "
                            "read-only. Delete these folders by hand or ask their owner.")
    return [repo.repo_id for repo in selected]


def _parent_writable(folder: Path) -> bool:
    """Return whether `folder` could be created: the nearest existing parent is writable."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            return os.access(parent, os.W_OK)
    return False
