"""Named models and how a --model argument turns into a loaded model package."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ModelPackageError
from .package import DEFAULT_MODEL_NAME, BUNDLED_MODELS_DIR, LoadedModel, load_model_package


def bundled_model_names() -> list[str]:
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_folder(spec: str | os.PathLike | None) -> Path:
    """Return the package folder for `spec`: a bundled model name, or a local folder path."""
    spec = str(spec or DEFAULT_MODEL_NAME)
    if spec in bundled_model_names():
        return BUNDLED_MODELS_DIR / spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(bundled_model_names()) or "none"
    raise ModelPackageError(f"Model '{spec}' not found: it is neither a known model name ({known}) "
                            "nor a folder with config.json.")


def load_model(spec: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the model that `spec` names (default: the bundled model)."""
    return load_model_package(resolve_model_folder(spec), device=device)
