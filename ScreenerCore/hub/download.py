"""Fetch model package files from a Hugging Face hub repo into the cache and verify them before use.

Files are looked up in the cache first, so a model that is cached at a pinned commit loads
without any network request, also from a read-only cache folder. Every file is checked
against its expected SHA-256 before the caller sees the folder. A file that fails the check
is deleted from the cache. Only the files named by the registry entry or by the repo's
checksums.json are downloaded, and model packages contain only safetensors and JSON.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import ModelPackageError
from ..package import CHECKSUM_FILE, CONFIG_FILE, ChecksumMismatchError, find_checksum_mismatches, read_checksums
from .cache import CACHE_DIR_ENV, resolve_cache_dir, repo_cache_folder

try:
    # huggingface_hub 2.x sends its requests with httpx2; a proxy failure surfaces as httpx2.ProxyError.
    from httpx2 import HTTPError as HttpClientError
except ImportError:  # older huggingface_hub versions use requests, whose errors are OSError subclasses
    HttpClientError = OSError

logger = logging.getLogger(__name__)

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
README_SECTION = "the README section 'Pretrained models and offline use'"


class ModelNotCachedError(ModelPackageError):
    """A hub model that is not in the cache while the hub cannot be used (offline or unreachable)."""


class HubDownloadError(ModelPackageError):
    """A download from the hub that failed: repo, revision or file not found, access denied, network error."""


class IntegrityError(ModelPackageError):
    """Downloaded files whose SHA-256 differs from the expected digest; the bad files were deleted."""


@dataclass(frozen=True)
class HubSource:
    """A model package in a hub repo at one revision, with the SHA-256 of each file to load.

    `sha256` is None for a repo that the user names directly (REPO@REV): then the repo's own
    checksums.json gives the digests, which catches corrupted transfers but not a repo whose
    files and checksums were both replaced.
    """

    repo_id: str
    revision: str
    sha256: dict[str, str] | None = None
    name: str | None = None

    @property
    def spec(self) -> str:
        """The --model value that names this model."""
        return self.name or f"{self.repo_id}@{self.revision}"

    @property
    def label(self) -> str:
        where = f"hub repo {self.repo_id} at revision {self.revision}"
        return f"model '{self.name}' ({where})" if self.name else where


def is_offline() -> bool:
    """Return True when HF_HUB_OFFLINE is set, read now (huggingface_hub reads it once, at import)."""
    return hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES


def hub_endpoint() -> str | None:
    """Return HF_ENDPOINT as set now, or None to let huggingface_hub use its default endpoint."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def is_commit_hash(revision: str) -> bool:
    return COMMIT_HASH.fullmatch(revision) is not None


def cached_file(source: HubSource, revision: str, filename: str, cache_dir: Path) -> Path | None:
    """Return the cached copy of `filename` at `revision` (a commit or a cached branch), or None; no network."""
    path = try_to_load_from_cache(source.repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    return Path(path) if isinstance(path, str) else None


def cached_model_folder(source: HubSource, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the snapshot folder when every file of `source` is cached, else None; checks presence, not digests."""
    folder = resolve_cache_dir(cache_dir)
    if source.sha256 is not None:
        names = list(source.sha256)
    else:
        checksums = cached_file(source, source.revision, CHECKSUM_FILE, folder)
        if checksums is None:
            return None
        try:
            names = list(read_checksums(checksums.parent))
        except ModelPackageError:
            return None
    paths = [cached_file(source, source.revision, name, folder) for name in names]
    if any(path is None for path in paths):
        return None
    return paths[0].parent


def is_model_cached(source: HubSource, cache_dir: str | os.PathLike | None = None) -> bool:
    """Return whether every file of `source` is in the cache; checks presence only, not digests."""
    return cached_model_folder(source, cache_dir) is not None


def fetch_model(source: HubSource, cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, str]]:
    """Return the cached snapshot folder of `source` and the verified SHA-256 of each package file.

    Downloads the files that are not cached yet, unless offline mode is on. Raises
    ModelNotCachedError, HubDownloadError or IntegrityError with the fix in the message.
    """
    folder = resolve_cache_dir(cache_dir)
    revision = source.revision
    if not is_commit_hash(revision):
        revision = resolve_branch(source, folder)

    expected = source.sha256
    if expected is None:
        checksums_path = fetch_file(source, revision, CHECKSUM_FILE, folder)
        try:
            expected = read_checksums(checksums_path.parent)
        except ModelPackageError as error:
            # Delete it, or every later run would read the same unusable cached copy.
            removal_error = remove_cached_file(checksums_path, folder)
            removed = "It was deleted from the cache." if removal_error is None else (
                f"Delete '{checksums_path}' by hand ({removal_error}).")
            raise IntegrityError(f"The checksums.json of {source.label} is unusable: {error} {removed} Run "
                                 f"`screener download {source.spec}` to fetch it again.") from error
        if CONFIG_FILE not in expected:
            raise HubDownloadError(f"The checksums.json of {source.label} does not list {CONFIG_FILE}, so the "
                                   "repo is not a Screener model package. Check the repo id and revision.")

    paths = {name: fetch_file(source, revision, name, folder) for name in expected}
    snapshot = paths[CONFIG_FILE].parent
    verify_cached_files(source, snapshot, expected, folder)
    return snapshot, expected


def resolve_branch(source: HubSource, cache_dir: Path) -> str:
    """Return the commit that branch or tag `source.revision` points to: from the hub, else from the cache."""
    if not is_offline():
        config_path = fetch_file(source, source.revision, CONFIG_FILE, cache_dir)
        commit = config_path.parent.name
    else:
        ref = repo_cache_folder(cache_dir, source.repo_id) / "refs" / source.revision
        if not ref.is_file():
            raise not_cached_error(source, cache_dir, "offline mode is on (HF_HUB_OFFLINE)")
        commit = ref.read_text(encoding="utf-8").strip()
    logger.warning("Revision '%s' of %s is a branch or tag and may change; using commit %s. Pin it with "
                   "--model %s@%s.", source.revision, source.repo_id, commit, source.repo_id, commit)
    return commit


def fetch_file(source: HubSource, revision: str, filename: str, cache_dir: Path) -> Path:
    """Return the cached path of one file, downloading it with hf_hub_download when it is not cached."""
    path = cached_file(source, revision, filename, cache_dir)
    if path is not None and is_commit_hash(revision):
        return path
    if is_offline():
        if path is not None:
            return path
        raise not_cached_error(source, cache_dir, "offline mode is on (HF_HUB_OFFLINE)")

    endpoint = hub_endpoint()
    logger.info("Fetching %s of %s from the hub", filename, source.label)
    try:
        return Path(hf_hub_download(source.repo_id, filename, revision=revision, cache_dir=str(cache_dir),
                                    endpoint=endpoint))
    except LocalEntryNotFoundError as error:
        reason = f"the hub at {endpoint or hub_constants.ENDPOINT} could not be reached ({error.__cause__ or error})"
        raise not_cached_error(source, cache_dir, reason) from error
    except GatedRepoError as error:
        raise HubDownloadError(f"Access to {source.label} was denied: the repo is gated. Accept its terms on the "
                               "hub, then log in with `hf auth login` or set HF_TOKEN.") from error
    except RepositoryNotFoundError as error:
        raise HubDownloadError(f"Hub repo '{source.repo_id}' was not found, or it is private. Check the repo id; "
                               "for a private repo log in with `hf auth login` or set HF_TOKEN.") from error
    except RevisionNotFoundError as error:
        raise HubDownloadError(f"Revision '{revision}' was not found in hub repo '{source.repo_id}'. Check the "
                               "commit hash or branch name.") from error
    except EntryNotFoundError as error:
        raise HubDownloadError(f"File '{filename}' was not found in {source.label}. The repo is not a complete "
                               "Screener model package at that revision.") from error
    except HfHubHTTPError as error:
        raise HubDownloadError(f"Downloading '{filename}' of {source.label} failed: {error}") from error
    except PermissionError as error:
        raise HubDownloadError(f"Cannot write to the model cache '{cache_dir}' ({error}). Pass --cache-dir with a "
                               f"writable folder or set {CACHE_DIR_ENV}.") from error
    except (OSError, HttpClientError) as error:
        raise HubDownloadError(f"Downloading '{filename}' of {source.label} failed: {error}. If this machine "
                               f"reaches the internet through a proxy, see {README_SECTION}.") from error


def not_cached_error(source: HubSource, cache_dir: Path, reason: str) -> ModelNotCachedError:
    message = (f"The {source.label} is not in the model cache '{cache_dir}', and {reason}. To use it without "
               f"network access: on a machine that can reach the hub, run `screener download {source.spec} "
               f"--cache-dir FOLDER`, copy FOLDER to this machine, and pass --cache-dir FOLDER or set "
               f"{CACHE_DIR_ENV}=FOLDER (or copy the contents of FOLDER into '{cache_dir}').")
    if "could not be reached" in reason:
        message += f" If this machine reaches the internet through a proxy, see {README_SECTION}."
    return ModelNotCachedError(message)


def verify_cached_files(source: HubSource, snapshot: Path, expected: dict[str, str], cache_dir: Path) -> None:
    """Raise IntegrityError after deleting every cached file whose SHA-256 differs from `expected`."""
    mismatches = find_checksum_mismatches(snapshot, expected)
    if not mismatches:
        return
    digest_source = "the registry" if source.sha256 is not None else "the repo's checksums.json"
    lines = []
    for mismatch in mismatches:
        lines.append(describe_removal(mismatch, cache_dir, digest_source))
    raise IntegrityError(
        f"Integrity check failed for {source.label}: " + " ".join(lines) + f" Run `screener download {source.spec}` "
        "to fetch the files again. If the mismatch repeats, the hub (or a proxy in between) serves files that "
        "differ from the published ones: do not use them, and report it to the model's maintainers.")


def describe_removal(mismatch: ChecksumMismatchError, cache_dir: Path, digest_source: str) -> str:
    """Delete the mismatching cached file and return one sentence on what was found and done."""
    name = mismatch.path.name
    found = f"'{name}' has SHA-256 {mismatch.actual} but {digest_source} expects {mismatch.expected}."
    error = remove_cached_file(mismatch.path, cache_dir)
    if error is None:
        logger.warning("Deleted %s from the cache: SHA-256 mismatch", mismatch.path)
        return f"{found} It was deleted from the cache."
    return f"{found} It could not be deleted ({error}); delete '{mismatch.path}' by hand."


def remove_cached_file(pointer: Path, cache_dir: Path) -> str | None:
    """Delete a snapshot entry and the blob it links to; return the error text, or None on success.

    Only a blob inside `cache_dir` is deleted, so a link that points elsewhere never removes
    files outside the cache.
    """
    blob = pointer.resolve() if pointer.is_symlink() else None
    try:
        pointer.unlink()
        if blob is not None and blob.is_relative_to(cache_dir) and blob.exists():
            blob.unlink()
    except OSError as error:
        return str(error)
    return None
