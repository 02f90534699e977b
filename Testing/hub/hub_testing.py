"""Fixtures and helpers shared by the hub tests: an isolated environment, the fake hub, registry files.

The hub tests import these fixtures by name. They live here and not in a conftest.py because
the tests of other folders import the top-level conftest as a module, and a second conftest.py
would shadow it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from huggingface_hub import constants as hub_constants

from fake_hub import FakeHub
from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig, PreprocessingConfig
from ScreenerCore.models import ScreenerModel
from ScreenerCore.package import CHECKSUM_FILE, save_model_package, sha256_of
from ScreenerCore.registry import REGISTRY_FILES_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
# Files of a model package that are loaded, so a registry entry lists their SHA-256.
# Port 9 (discard) on the loopback interface: nothing listens there in the tests.
UNUSED_LOCAL_ENDPOINT = "http://127.0.0.1:9"
PACKAGE_FILES = ("config.json", "descriptor.safetensors", "condition.safetensors", "density.safetensors")


@pytest.fixture(autouse=True)
def hub_environment(monkeypatch, tmp_path):
    """Point every cache and setting at tmp_path, so no test reads or writes the user's files or the real hub."""
    monkeypatch.setenv("SCREENER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN", REGISTRY_FILES_ENV):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these once, at import, so they are patched where it keeps them.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    # With telemetry on, the client's first request in a process also fetches a list of AI agents
    # from its import-time endpoint. That request would go to a host outside the test.
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # A request that does not go through the endpoint Screener passes goes to a closed local port,
    # never to the public hub.
    point_client_at(monkeypatch, UNUSED_LOCAL_ENDPOINT)
    return tmp_path


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    point_client_at(monkeypatch, hub.url)
    yield hub
    hub.stop()


def point_client_at(monkeypatch, url: str) -> None:
    """Set the endpoint that huggingface_hub computed at import (HF_ENDPOINT then) to `url`."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def make_package(folder: Path, seed: int) -> Path:
    """Save a package with the tiny test architecture, weights drawn from `seed` and a varied density.

    The density parameters are redrawn with a larger spread because with their initial values the
    tiny model can score every voxel of the test CT the same, and then comparing maps proves little.
    """
    torch.manual_seed(seed)
    config = ModelConfig(
        name=f"tiny-seed-{seed}",
        preprocessing=PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32), overlap=0.25),
        descriptor=NetConfig(in_channels=1, out_channels=8, channels=(4, 8)),
        condition=ConditionConfig(kind="masked", net=NetConfig(in_channels=2, out_channels=8, channels=(4, 8))),
    )
    config.density.hidden_channels = 8
    model = ScreenerModel(config).eval()
    with torch.no_grad():
        for parameter in model.density.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return save_model_package(model, folder)


def package_digests(folder: Path) -> dict[str, str]:
    return {name: sha256_of(folder / name) for name in PACKAGE_FILES}


def registry_entry(name: str, repo_id: str, revision: str, digests: dict[str, str]) -> dict:
    return {"name": name, "repo_id": repo_id, "revision": revision, "sha256": dict(digests),
            "description": "served by the test hub"}


def write_registry(folder: Path, entries: list[dict], monkeypatch=None) -> Path:
    """Write a registry file and, when `monkeypatch` is given, name it in SCREENER_MODEL_REGISTRY."""
    path = folder / "registry.json"
    path.write_text(json.dumps({"models": entries}, indent=2), encoding="utf-8")
    if monkeypatch is not None:
        monkeypatch.setenv(REGISTRY_FILES_ENV, str(path))
    return path


def serve_package(hub: FakeHub, folder: Path, repo_id: str = "screener-test/tiny") -> tuple[str, dict[str, str]]:
    """Push a package folder to the fake hub; return the commit and the digests of its loaded files."""
    commit = hub.push_folder(repo_id, folder)
    return commit, package_digests(folder)


def cache_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every path under `folder` to (size, mtime in ns), to prove a run changed nothing."""
    listing = {}
    for root, directories, files in os.walk(folder):
        for name in directories + files:
            path = Path(root) / name
            stat = path.lstat()
            listing[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return listing


def write_small_ct(path: Path) -> Path:
    """Write a 64x64x40 CT at 2 mm: air around an ellipsoid of soft tissue (40 HU) with a denser nodule."""
    z, y, x = np.mgrid[0:40, 0:64, 0:64].astype(np.float32)
    body = ((x - 32) / 26) ** 2 + ((y - 32) / 20) ** 2 + ((z - 20) / 18) ** 2 <= 1.0
    nodule = (x - 40) ** 2 + (y - 30) ** 2 + (z - 20) ** 2 <= 16
    values = np.full(body.shape, -1000, dtype=np.int16)
    values[body] = 40
    values[nodule] = 300
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def run_screener(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `python -m ScreenerCore` in a fresh process, so huggingface_hub reads `env` at import."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.run([sys.executable, "-m", "ScreenerCore", *arguments], capture_output=True, text=True,
                          env=full_env, cwd=REPO_ROOT, timeout=600)


def checksums_of(folder: Path) -> dict[str, str]:
    return json.loads((folder / CHECKSUM_FILE).read_text(encoding="utf-8"))
