"""The Slicer module's model list and cache controls, fed by the registry, with a bundled and a served hub model."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from hub_testing import (  # noqa: F401
    REPO_ROOT,
    fake_hub,
    hub_environment,
    registry_entry,
    serve_package,
    write_registry,
)
from ScreenerCore import registry
from ScreenerCore.cli import main

# The module's logic package is plain Python; its models module imports only ScreenerCore.
MODULE_FOLDER = REPO_ROOT / "ScreenerExtension" / "ScreenerModule"
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

from ScreenerModuleLib import models as module_models  # noqa: E402

REPO_ID = "screener-test/tiny"


@pytest.fixture
def registered(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder, REPO_ID)
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)
    bundled = tmp_path / "bundled_models"
    shutil.copytree(tiny_model_folder, bundled / "screener-ct-small")
    monkeypatch.setattr(registry, "BUNDLED_MODELS_DIR", bundled)
    return commit


def labels() -> dict[str, str]:
    return {choice.name: choice.label for choice in module_models.model_choices()}


def test_module_lists_bundled_and_hub(registered, fake_hub, capsys):
    assert labels() == {"screener-ct-small": "screener-ct-small (bundled)",
                        "tiny-hub": "tiny-hub (downloads on first use)"}

    assert main(["download", "tiny-hub"]) == 0
    capsys.readouterr()
    fake_hub.reset_requests()

    assert labels()["tiny-hub"] == "tiny-hub (downloaded)"
    assert fake_hub.requests == []


def test_module_cache_controls(registered, capsys):
    assert module_models.cache_folder() == Path(os.environ["SCREENER_CACHE_DIR"]).resolve()
    assert module_models.cache_size_bytes() == 0

    assert main(["download", "tiny-hub"]) == 0
    capsys.readouterr()
    assert module_models.cache_size_bytes() > 0

    assert module_models.clear_downloaded_models() == [REPO_ID]
    assert labels()["tiny-hub"] == "tiny-hub (downloads on first use)"
