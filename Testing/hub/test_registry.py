"""The model registry: --model parsing, registry file validation, the model list and the cache folder."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import ScreenerCore
from hub_testing import (  # noqa: F401
    fake_hub,
    hub_environment,
    package_digests,
    registry_entry,
    serve_package,
    write_registry,
)
from ScreenerCore import registry
from ScreenerCore.errors import ModelPackageError
from ScreenerCore.hub import default_cache_dir, resolve_cache_dir
from ScreenerCore.registry import REGISTRY_FILES_ENV, list_models, load_model, parse_model_spec

REPO_ID = "screener-test/tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "ab" * 32


@pytest.fixture
def bundled_folder(tmp_path, tiny_model_folder, monkeypatch) -> Path:
    """A bundled models folder with the tiny package as 'screener-ct-small'."""
    folder = tmp_path / "bundled_models"
    shutil.copytree(tiny_model_folder, folder / "screener-ct-small")
    monkeypatch.setattr(registry, "BUNDLED_MODELS_DIR", folder)
    return folder


def test_spec_bundled_name(bundled_folder):
    parsed = parse_model_spec("screener-ct-small")
    assert parsed.bundled
    assert parsed.folder == bundled_folder / "screener-ct-small"
    assert parse_model_spec(None).folder == parsed.folder


def test_spec_registry_name(tmp_path, monkeypatch):
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, COMMIT, {"config.json": DIGEST})], monkeypatch)
    parsed = parse_model_spec("tiny-hub")
    assert parsed.hub.repo_id == REPO_ID
    assert parsed.hub.revision == COMMIT
    assert parsed.hub.sha256 == {"config.json": DIGEST}
    assert parsed.hub.name == "tiny-hub"


def test_spec_local_folder(tiny_model_folder):
    parsed = parse_model_spec(str(tiny_model_folder))
    assert parsed.folder == tiny_model_folder
    assert parsed.hub is None


@pytest.mark.parametrize("spec, revision", [(f"{REPO_ID}@{COMMIT}", COMMIT), (f"{REPO_ID}@main", "main"),
                                            ("single-name@v1.0", "v1.0")])
def test_spec_repo_at_revision(spec, revision):
    parsed = parse_model_spec(spec)
    assert parsed.hub.revision == revision
    assert parsed.hub.sha256 is None
    assert parsed.hub.spec == spec


@pytest.mark.parametrize("spec, expected", [
    ("owner/name", "--model owner/name@<commit hash>"),
    ("no-such-model", "neither a known model name"),
    ("bad..repo@main", "not a valid hub repo id"),
    (f"{REPO_ID}@", "no revision after '@'"),
])
def test_spec_errors_name_the_fix(spec, expected):
    with pytest.raises(ModelPackageError) as raised:
        parse_model_spec(spec)
    assert expected in str(raised.value)


@pytest.mark.parametrize("change, expected", [
    ({"revision": "main"}, "not a 40-character lower-case commit hash"),
    ({"revision": COMMIT[:12]}, "not a 40-character lower-case commit hash"),
    ({"revision": COMMIT.upper()}, "not a 40-character lower-case commit hash"),
    ({"sha256": {"descriptor.safetensors": DIGEST}}, "config.json included"),
    ({"sha256": {"config.json": "abc"}}, "expected 64 hexadecimal digits"),
    ({"sha256": {"config.json": DIGEST, "../outside.json": DIGEST}}, "not a plain relative path"),
    ({"sha256": {"config.json": DIGEST, "/etc/passwd.json": DIGEST}}, "not a plain relative path"),
    ({"sha256": {"config.json": DIGEST, "weights.pt": DIGEST}}, "pickle-based file"),
    ({"sha256": {"config.json": DIGEST, "model.ckpt": DIGEST}}, "pickle-based file"),
    ({"sha256": {"config.json": DIGEST, "run.py": DIGEST}}, "may contain only"),
    ({"name": "owner/name"}, "the name must start with a letter or digit"),
    ({"repo_id": "bad..repo"}, "invalid repo_id"),
    ({"revisions": COMMIT}, "unknown keys ['revisions']"),
])
def test_invalid_registry_entry_rejected(tmp_path, monkeypatch, change, expected):
    entry = registry_entry("tiny-hub", REPO_ID, COMMIT, {"config.json": DIGEST})
    entry.update(change)
    path = write_registry(tmp_path, [entry], monkeypatch)

    with pytest.raises(ModelPackageError) as raised:
        registry.hub_models()

    assert expected in str(raised.value)
    assert str(path) in str(raised.value)


def test_registry_file_errors(tmp_path, monkeypatch):
    missing = tmp_path / "missing.json"
    monkeypatch.setenv(REGISTRY_FILES_ENV, str(missing))
    with pytest.raises(ModelPackageError, match="Cannot read the model registry"):
        registry.hub_models()

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    monkeypatch.setenv(REGISTRY_FILES_ENV, str(broken))
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        registry.hub_models()

    broken.write_text(json.dumps([{"name": "x"}]))
    with pytest.raises(ModelPackageError, match="'models' list"):
        registry.hub_models()


def test_duplicate_model_names_rejected(tmp_path, monkeypatch, bundled_folder):
    entry = registry_entry("tiny-hub", REPO_ID, COMMIT, {"config.json": DIGEST})
    first = write_registry(tmp_path, [entry])
    second_folder = tmp_path / "second"
    second_folder.mkdir()
    second = write_registry(second_folder, [entry])
    monkeypatch.setenv(REGISTRY_FILES_ENV, f"{first}{os.pathsep}{second}")
    with pytest.raises(ModelPackageError, match="'tiny-hub' is registered twice"):
        registry.hub_models()

    clash = registry_entry("screener-ct-small", REPO_ID, COMMIT, {"config.json": DIGEST})
    write_registry(tmp_path, [clash], monkeypatch)
    with pytest.raises(ModelPackageError, match="'screener-ct-small' is registered twice"):
        registry.hub_models()


def test_model_list_shows_source_and_cache(fake_hub, tiny_model_folder, bundled_folder, tmp_path, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder, REPO_ID)
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)

    before = {info.name: info for info in list_models()}

    assert fake_hub.requests == []
    assert list(before) == ["screener-ct-small", "tiny-hub"]
    assert before["screener-ct-small"].source == "bundled"
    assert before["screener-ct-small"].cached
    assert before["screener-ct-small"].folder == bundled_folder / "screener-ct-small"
    assert before["tiny-hub"].source == "hub"
    assert not before["tiny-hub"].cached
    assert before["tiny-hub"].folder is None
    assert (before["tiny-hub"].repo_id, before["tiny-hub"].revision) == (REPO_ID, commit)

    load_model("tiny-hub")
    fake_hub.reset_requests()
    after = {info.name: info for info in list_models()}

    assert after["tiny-hub"].cached
    assert after["tiny-hub"].folder == resolve_cache_dir(None) / "models--screener-test--tiny" / "snapshots" / commit
    assert fake_hub.requests == []


def test_bundled_model_loads_offline(bundled_folder, tiny_model_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(None)
    assert loaded.folder == bundled_folder / "screener-ct-small"
    assert loaded.config.name == "tiny-test-model"


def test_default_cache_dir_is_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SCREENER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform not in ("win32", "darwin"):
        assert default_cache_dir() == tmp_path / "xdg" / "screener" / "hub"
    install_folder = Path(ScreenerCore.__file__).resolve().parent
    assert not default_cache_dir().resolve().is_relative_to(install_folder)

    monkeypatch.setenv("SCREENER_CACHE_DIR", str(tmp_path / "custom"))
    assert default_cache_dir() == tmp_path / "custom"
    assert resolve_cache_dir(tmp_path / "flag") == (tmp_path / "flag").resolve()


def test_cache_dir_argument_overrides_environment(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder, REPO_ID)
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)
    chosen = tmp_path / "chosen-cache"

    loaded = load_model("tiny-hub", cache_dir=chosen)

    assert loaded.folder.is_relative_to(chosen.resolve())
    assert not (tmp_path / "cache").exists()
    assert package_digests(loaded.folder) == digests
