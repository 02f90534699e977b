"""Model packages: a folder with config.json, one safetensors file per net, checksums and a model card.

Only JSON and safetensors are read, so loading a package never executes or unpickles
anything from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from .config import ModelConfig
from .errors import ModelPackageError

if TYPE_CHECKING:
    import torch

    from .models import ScreenerModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKSUM_FILE = "checksums.json"
WEIGHT_FILES = {"descriptor": "descriptor.safetensors", "condition": "condition.safetensors",
                "density": "density.safetensors"}
MODEL_CARD_FILE = "README.md"
# Suffixes a package may contain. Weights must be safetensors because the pickle-based formats
# (.bin, .pt, .pth, .ckpt, .pkl) can run arbitrary code when they are loaded.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".md")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")
BUNDLED_MODELS_DIR = Path(__file__).parent / "bundled_models"
DEFAULT_MODEL_NAME = "screener-ct-small"


@dataclass
class LoadedModel:
    """A model package in memory: its config, the model in eval mode, and where it came from."""

    config: ModelConfig
    model: ScreenerModel
    folder: Path


class ChecksumMismatchError(ModelPackageError):
    """A package file whose SHA-256 differs from the expected digest."""

    def __init__(self, message: str, path: Path, expected: str, actual: str):
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_files(config: ModelConfig) -> list[str]:
    """Return the file names a package with `config` must contain, config.json first."""
    names = [CONFIG_FILE, WEIGHT_FILES["descriptor"], WEIGHT_FILES["density"]]
    if config.condition.kind == "masked":
        names.insert(2, WEIGHT_FILES["condition"])
    return names


def read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelPackageError(f"Model folder '{folder}' has no {CONFIG_FILE}. A model package needs "
                                f"{CONFIG_FILE} and its .safetensors files; re-export or re-download it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelPackageError(f"'{path}' is not valid JSON ({error}). Re-download or re-export the model.") from error
    return ModelConfig.from_dict(data)


def check_package_file_name(name: str, source: str) -> None:
    """Raise ModelPackageError unless `name` is a plain relative file name of an allowed kind.

    `source` names where the file list came from (a registry entry, a checksums.json), for the message.
    """
    if not isinstance(name, str) or not name:
        raise ModelPackageError(f"{source} lists an empty or non-string file name: {name!r}.")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise ModelPackageError(f"{source} lists the file name '{name}', which is not a plain relative path. "
                                "File names in a model package must stay inside the package folder.")
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise ModelPackageError(f"{source} lists '{name}', a pickle-based file. Screener loads only safetensors "
                                "and JSON because unpickling can run arbitrary code; convert the weights to "
                                "safetensors and export the package again.")
    if not lower.endswith(ALLOWED_SUFFIXES):
        raise ModelPackageError(f"{source} lists '{name}'; a model package may contain only "
                                f"{', '.join(ALLOWED_SUFFIXES)} files.")


def check_sha256_digest(digest: str, name: str, source: str) -> str:
    """Return `digest` in lower case, or raise ModelPackageError unless it is 64 hexadecimal digits."""
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise ModelPackageError(f"{source} gives '{name}' the SHA-256 {digest!r}; expected 64 hexadecimal digits.")
    return digest.lower()


def read_checksums(folder: Path) -> dict[str, str]:
    """Read and validate the folder's checksums.json: file name to lower-case SHA-256."""
    path = folder / CHECKSUM_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelPackageError(f"'{path}' is not valid JSON ({error}). Re-download or re-export the model.") from error
    if not isinstance(data, dict) or not data:
        raise ModelPackageError(f"'{path}' must be a JSON object of file name to SHA-256. Re-export the model.")
    checksums = {}
    for name, digest in data.items():
        check_package_file_name(name, str(path))
        checksums[name] = check_sha256_digest(digest, name, str(path))
    return checksums


def find_checksum_mismatches(folder: Path, expected: dict[str, str]) -> list[ChecksumMismatchError]:
    """Return one error per file in `expected` whose SHA-256 differs; raise ModelPackageError if one is missing."""
    mismatches = []
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ModelPackageError(f"Model file '{path}' is missing. Re-download or re-export the model.")
        actual = sha256_of(path)
        if actual != digest.lower():
            message = (f"Model file '{path}' has SHA-256 {actual}, expected {digest}. The file is corrupted or "
                       "was changed; delete it and download or export the model again.")
            mismatches.append(ChecksumMismatchError(message, path=path, expected=digest.lower(), actual=actual))
    return mismatches


def verify_checksums(folder: Path, expected: dict[str, str]) -> None:
    """Raise ModelPackageError unless every file in `expected` exists and has the given SHA-256.

    A file with the wrong digest raises ChecksumMismatchError, which names the file.
    """
    mismatches = find_checksum_mismatches(folder, expected)
    if mismatches:
        raise mismatches[0]


def load_model_package(folder: str | os.PathLike, device: str | torch.device = "cpu",
                       expected_sha256: dict[str, str] | None = None) -> LoadedModel:
    """Load a model package folder onto `device` in eval mode.

    Checks each file against `expected_sha256` (file name to hex digest) when given, else
    against the folder's checksums.json when present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelPackageError(f"Model folder '{folder}' not found.")

    if expected_sha256 is None and (folder / CHECKSUM_FILE).is_file():
        expected_sha256 = read_checksums(folder)
    if expected_sha256:
        verify_checksums(folder, expected_sha256)

    config = read_config(folder)
    # torch is imported here, not at the top, so listing and verifying packages works without it.
    from safetensors.torch import load_file  # noqa: PLC0415

    from .models import ScreenerModel  # noqa: PLC0415

    model = ScreenerModel(config)
    parts = {"descriptor": model.descriptor, "density": model.density}
    if model.condition is not None:
        parts["condition"] = model.condition

    for part, module in parts.items():
        path = folder / WEIGHT_FILES[part]
        if not path.is_file():
            raise ModelPackageError(f"Model file '{path}' is missing; the config needs {part} weights. "
                                    "Re-download or re-export the model.")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ModelPackageError(f"Cannot read '{path}' as safetensors ({error}). Re-download the model.") from error
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ModelPackageError(f"Weights in '{path}' do not match the architecture in {CONFIG_FILE}: "
                                    f"{error}") from error

    model.to(device).eval()
    logger.info("Loaded model '%s' from %s", config.name, folder)
    return LoadedModel(config=config, model=model, folder=folder)


def save_model_package(model: ScreenerModel, folder: str | os.PathLike, model_card: str | None = None) -> Path:
    """Write `model` as a package: config.json, safetensors weights, checksums.json and README.md."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")

    parts = {"descriptor": model.descriptor, "density": model.density}
    if model.condition is not None:
        parts["condition"] = model.condition
    from safetensors.torch import save_file  # noqa: PLC0415 - torch only when writing weights

    for part, module in parts.items():
        state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(folder / WEIGHT_FILES[part]), metadata={"screener_part": part})

    if model_card is not None:
        (folder / "README.md").write_text(model_card, encoding="utf-8")

    checksums = {name: sha256_of(folder / name) for name in package_files(config)}
    (folder / CHECKSUM_FILE).write_text(json.dumps(checksums, indent=2) + "\n", encoding="utf-8")
    return folder


def bundled_model_folder(name: str = DEFAULT_MODEL_NAME) -> Path:
    return BUNDLED_MODELS_DIR / name
