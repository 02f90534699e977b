"""Named models and how a --model argument turns into a loaded model package.

A --model value is looked up in this order:
1. a registry name: a bundled model (shipped inside ScreenerCore, works offline) or a hub
   model (repo id, pinned commit, SHA-256 of every file);
2. a local folder that contains a model package;
3. OWNER/NAME@REVISION: any hub repo at a commit hash (or, unpinned, a branch or tag).

Hub models come from HUB_MODELS below and from the JSON files listed in the environment
variable SCREENER_MODEL_REGISTRY (separated by os.pathsep), so a site can add its own
mirrors or models without changing the code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import ModelPackageError
from .hub.download import HubSource, cached_model_folder, fetch_model, is_commit_hash
from .package import (
    BUNDLED_MODELS_DIR,
    CONFIG_FILE,
    DEFAULT_MODEL_NAME,
    LoadedModel,
    check_package_file_name,
    check_sha256_digest,
    load_model_package,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

REGISTRY_FILES_ENV = "SCREENER_MODEL_REGISTRY"
# Registry names cannot contain "/" or "@", so they never look like a folder path or a REPO@REV value.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HUB_MODEL_KEYS = {"name", "repo_id", "revision", "sha256", "description"}


@dataclass(frozen=True)
class HubModel:
    """A registry entry for a model package in a hub repo, pinned to one commit."""

    name: str
    repo_id: str
    # A 40-character commit hash, never a branch, so the files cannot change under the name.
    revision: str
    # File name to SHA-256 (hex) of every file that is loaded; config.json is always one of them.
    sha256: dict[str, str]
    description: str = ""

    def source(self) -> HubSource:
        return HubSource(repo_id=self.repo_id, revision=self.revision, sha256=dict(self.sha256), name=self.name)


# Hub models known to this version of Screener.
# TODO: no Screener model package is published on the hub yet. Add its entry here, as printed by
# `screener-publish`, once one is.
HUB_MODELS: tuple[HubModel, ...] = ()


@dataclass
class ModelInfo:
    """One model that `--model NAME` can load, for listings such as `screener models` and the Slicer module."""

    name: str
    # "bundled" (inside the installed package) or "hub".
    source: str
    # Whether the model's files are on this machine, so it can be loaded without network access.
    cached: bool
    description: str = ""
    repo_id: str | None = None
    revision: str | None = None
    # The package folder when the model is on this machine, else None.
    folder: Path | None = None


@dataclass
class ModelSpec:
    """A parsed --model value: a package folder on disk, or a hub source to fetch."""

    folder: Path | None = None
    hub: HubSource | None = None
    bundled: bool = False


def bundled_model_names() -> list[str]:
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def check_model_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ModelPackageError(f"{where}: the name must start with a letter or digit and contain only letters, "
                                "digits, '.', '_' and '-'.")


def check_repo_id(repo_id: object, where: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ModelPackageError(f"{where}: invalid repo_id {repo_id!r} ({error}).") from error


def hub_model_from_dict(data: object, origin: str) -> HubModel:
    """Validate one registry entry read from JSON; `origin` names the file for error messages."""
    if not isinstance(data, dict):
        raise ModelPackageError(f"{origin}: each entry in 'models' must be a JSON object, got {data!r}.")
    unknown = set(data) - HUB_MODEL_KEYS
    missing = {"name", "repo_id", "revision", "sha256"} - set(data)
    if unknown or missing:
        raise ModelPackageError(f"{origin}: entry {data.get('name')!r} has unknown keys {sorted(unknown)} or lacks "
                                f"{sorted(missing)}; the keys are {sorted(HUB_MODEL_KEYS)}.")

    name = data["name"]
    where = f"{origin}: model {name!r}"
    check_model_name(name, where)
    check_repo_id(data["repo_id"], where)
    revision = data["revision"]
    if not isinstance(revision, str) or not is_commit_hash(revision):
        raise ModelPackageError(f"{where}: revision {revision!r} is not a 40-character lower-case commit hash. "
                                "Registry entries pin a commit so the files cannot change; use the commit that "
                                "screener-publish printed.")

    digests = data["sha256"]
    if not isinstance(digests, dict) or CONFIG_FILE not in digests:
        raise ModelPackageError(f"{where}: 'sha256' must map each package file, {CONFIG_FILE} included, to its "
                                "SHA-256.")
    checked = {}
    for file_name, digest in digests.items():
        check_package_file_name(file_name, where)
        checked[file_name] = check_sha256_digest(digest, file_name, where)
    return HubModel(name=name, repo_id=data["repo_id"], revision=revision, sha256=checked,
                    description=str(data.get("description", "")))


def read_registry_file(path: Path) -> list[HubModel]:
    """Read a registry file: {"models": [{"name", "repo_id", "revision", "sha256", "description"}, ...]}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelPackageError(f"Cannot read the model registry '{path}' named in {REGISTRY_FILES_ENV}: "
                                f"{error}.") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelPackageError(f"Model registry '{path}' is not valid JSON: {error}.") from error
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelPackageError(f"Model registry '{path}' must be a JSON object with a 'models' list.")
    return [hub_model_from_dict(entry, str(path)) for entry in data["models"]]


def hub_models() -> list[HubModel]:
    """Return the built-in hub models and those of the files in SCREENER_MODEL_REGISTRY, read now."""
    models = list(HUB_MODELS)
    for item in os.environ.get(REGISTRY_FILES_ENV, "").split(os.pathsep):
        if item.strip():
            models.extend(read_registry_file(Path(item.strip()).expanduser()))

    seen = set(bundled_model_names())
    for model in models:
        if model.name in seen:
            raise ModelPackageError(f"Model name '{model.name}' is registered twice (check the files in "
                                    f"{REGISTRY_FILES_ENV}); each name must be unique.")
        seen.add(model.name)
    return models


def list_models(cache_dir: str | os.PathLike | None = None) -> list[ModelInfo]:
    """Return every registered model with its source and whether it is on this machine; no network access."""
    infos = []
    for name in bundled_model_names():
        infos.append(ModelInfo(name=name, source="bundled", cached=True, description="bundled with Screener",
                               folder=BUNDLED_MODELS_DIR / name))
    for model in hub_models():
        folder = cached_model_folder(model.source(), cache_dir)
        infos.append(ModelInfo(name=model.name, source="hub", cached=folder is not None,
                               description=model.description, repo_id=model.repo_id, revision=model.revision,
                               folder=folder))
    return infos


def parse_model_spec(spec: str | os.PathLike | None) -> ModelSpec:
    """Turn a --model value into a package folder or a hub source, without any network access."""
    text = str(spec) if spec is not None and str(spec) else DEFAULT_MODEL_NAME
    if text in bundled_model_names():
        return ModelSpec(folder=BUNDLED_MODELS_DIR / text, bundled=True)
    for model in hub_models():
        if model.name == text:
            return ModelSpec(hub=model.source())

    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSpec(folder=path)

    if "@" in text:
        repo_id, _, revision = text.rpartition("@")
        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise ModelPackageError(f"Model '{text}': '{repo_id}' is not a valid hub repo id ({error}). Use "
                                    "OWNER/NAME@COMMIT.") from error
        if not revision:
            raise ModelPackageError(f"Model '{text}' has no revision after '@'. Use OWNER/NAME@COMMIT.")
        if not is_commit_hash(revision):
            logger.warning("Model '%s' is not pinned: '%s' is a branch or tag, so the files can change between "
                           "downloads. Use a 40-character commit hash to pin it.", text, revision)
        return ModelSpec(hub=HubSource(repo_id=repo_id, revision=revision))

    known = ", ".join(bundled_model_names() + [model.name for model in hub_models()]) or "none"
    if text.count("/") == 1 and not path.exists():
        raise ModelPackageError(f"Model '{text}' not found: no such folder. To load the hub repo '{text}', add the "
                                f"revision to pin: --model {text}@<commit hash>. Known model names: {known}.")
    raise ModelPackageError(f"Model '{text}' not found: it is neither a known model name ({known}) nor a folder "
                            "with a model package, nor OWNER/NAME@REVISION. `screener models` lists the names.")


def resolve_model_folder(spec: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the package folder for `spec`, downloading and verifying a hub model first when needed."""
    parsed = parse_model_spec(spec)
    if parsed.hub is None:
        return parsed.folder
    folder, _ = fetch_model(parsed.hub, cache_dir)
    return folder


def load_model(spec: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               cache_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load the model that `spec` names (default: the bundled model) onto `device`.

    A hub model is fetched into `cache_dir` (default: SCREENER_CACHE_DIR or the user's cache)
    and every file is checked against its expected SHA-256 before it is read.
    """
    parsed = parse_model_spec(spec)
    if parsed.hub is None:
        return load_model_package(parsed.folder, device=device)
    folder, expected = fetch_model(parsed.hub, cache_dir)
    return load_model_package(folder, device=device, expected_sha256=expected)
