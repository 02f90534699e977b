"""The model list and the download cache for the GUI, taken from ScreenerCore's registry.

Listing reads only local files (the registry and the cache), never the network, so the module
opens quickly offline. Downloads happen in the background process when a hub model first runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ScreenerCore import registry
from ScreenerCore.hub import cache

logger = logging.getLogger(__name__)


@dataclass
class ModelChoice:
    """One entry of the model combo box."""

    # The value passed to --model.
    name: str
    # The text shown, with where the model comes from.
    label: str


def model_choices() -> list[ModelChoice]:
    """Return the registered models, bundled first; hub model labels show whether they are downloaded."""
    choices = []
    for info in registry.list_models():
        if info.source == "bundled":
            label = f"{info.name} (bundled)"
        elif info.cached:
            label = f"{info.name} (downloaded)"
        else:
            label = f"{info.name} (downloads on first use)"
        choices.append(ModelChoice(info.name, label))
    return choices


def cache_folder() -> Path:
    """Return the folder where downloaded models are kept (in the user's cache, or SCREENER_CACHE_DIR)."""
    return cache.resolve_cache_dir(None)


def cache_size_bytes() -> int:
    return cache.summarize_cache(None).size_bytes


def clear_downloaded_models() -> list[str]:
    """Delete every downloaded model from the cache folder; return the repo ids removed."""
    removed = cache.clear_cache(None)
    logger.info("Removed %d downloaded model(s) from %s", len(removed), cache_folder())
    return removed
