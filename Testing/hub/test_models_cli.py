"""`screener models`, `screener download` and `screener cache info|clear`, run in-process against the fake hub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from hub_testing import (  # noqa: F401
    fake_hub,
    hub_environment,
    make_package,
    registry_entry,
    serve_package,
    write_registry,
)
from ScreenerCore import registry
from ScreenerCore.cli import main

REPO_ID = "screener-test/tiny"
OTHER_REPO_ID = "screener-test/other"


@pytest.fixture
def served_models(fake_hub, tiny_model_folder, tmp_path, monkeypatch) -> dict[str, str]:
    """Serve two registered hub models and bundle the tiny package; return the commit of each hub model."""
    commit, digests = serve_package(fake_hub, tiny_model_folder, REPO_ID)
    other_commit, other_digests = serve_package(fake_hub, make_package(tmp_path / "other", seed=5), OTHER_REPO_ID)
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, commit, digests),
                              registry_entry("other-hub", OTHER_REPO_ID, other_commit, other_digests)], monkeypatch)
    bundled = tmp_path / "bundled_models"
    shutil.copytree(tiny_model_folder, bundled / "screener-ct-small")
    monkeypatch.setattr(registry, "BUNDLED_MODELS_DIR", bundled)
    return {"tiny-hub": commit, "other-hub": other_commit}


def cache_dir() -> Path:
    return Path(os.environ["SCREENER_CACHE_DIR"])


def models_table(capsys) -> dict[str, list[str]]:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "CACHED", "LOCATION"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_models_lists_bundled_and_hub(served_models, capsys):
    table = models_table(capsys)

    assert list(table) == ["screener-ct-small", "tiny-hub", "other-hub"]
    assert table["screener-ct-small"][:2] == ["bundled", "yes"]
    assert table["tiny-hub"] == ["hub", "no", f"{REPO_ID}@{served_models['tiny-hub']}"]
    assert table["other-hub"][:2] == ["hub", "no"]


def test_download_then_listed_as_cached(served_models, fake_hub, capsys):
    assert main(["download", "tiny-hub"]) == 0
    output = capsys.readouterr()
    folder = Path(output.out.strip())
    assert folder == cache_dir().resolve() / "models--screener-test--tiny" / "snapshots" / served_models["tiny-hub"]
    assert "Verified the SHA-256 of 4 files" in output.err

    fake_hub.reset_requests()
    table = models_table(capsys)
    assert table["tiny-hub"] == ["hub", "yes", str(folder)]
    assert table["other-hub"][:2] == ["hub", "no"]
    assert fake_hub.requests == []


def test_models_json_output(served_models, capsys):
    assert main(["download", "other-hub"]) == 0
    capsys.readouterr()

    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}

    assert rows["other-hub"]["cached"] is True
    assert rows["other-hub"]["revision"] == served_models["other-hub"]
    assert rows["tiny-hub"]["cached"] is False
    assert rows["tiny-hub"]["folder"] is None
    assert rows["screener-ct-small"]["source"] == "bundled"


def test_download_bundled_is_a_no_op(served_models, fake_hub, capsys):
    assert main(["download", "screener-ct-small"]) == 0
    output = capsys.readouterr()
    assert "nothing to download" in output.err
    assert output.out.strip() == str(registry.BUNDLED_MODELS_DIR / "screener-ct-small")
    assert fake_hub.requests == []


def test_download_cache_dir_option(served_models, tmp_path, capsys):
    chosen = tmp_path / "usb-stick"
    assert main(["download", "tiny-hub", "--cache-dir", str(chosen)]) == 0
    assert Path(capsys.readouterr().out.strip()).is_relative_to(chosen.resolve())
    assert not cache_dir().exists()


def test_cache_info_lists_repos(served_models, capsys):
    assert main(["cache", "info"]) == 0
    assert "does not exist yet" in capsys.readouterr().out

    assert main(["download", "tiny-hub"]) == 0
    capsys.readouterr()
    assert main(["cache", "info"]) == 0
    output = capsys.readouterr().out

    assert f"Model cache: {cache_dir().resolve()}" in output
    assert REPO_ID in output
    assert f"{served_models['tiny-hub']}  (tiny-hub)" in output
    assert OTHER_REPO_ID not in output


def test_cache_clear_one_model(served_models, capsys):
    assert main(["download", "tiny-hub"]) == 0
    assert main(["download", "other-hub"]) == 0
    capsys.readouterr()

    assert main(["cache", "clear", "--model", "tiny-hub", "--yes"]) == 0
    assert f"Deleted {REPO_ID}" in capsys.readouterr().out

    table = models_table(capsys)
    assert table["tiny-hub"][1] == "no"
    assert table["other-hub"][1] == "yes"


def test_cache_clear_all(served_models, capsys):
    assert main(["download", "tiny-hub"]) == 0
    assert main(["download", "other-hub"]) == 0
    capsys.readouterr()

    assert main(["cache", "clear", "--yes"]) == 0

    assert f"Deleted {OTHER_REPO_ID}, {REPO_ID}" in capsys.readouterr().out
    assert not list(cache_dir().glob("models--*"))
    table = models_table(capsys)
    assert table["tiny-hub"][1] == "no"
    assert table["other-hub"][1] == "no"


def test_cache_clear_needs_confirmation(served_models, capsys, monkeypatch):
    assert main(["download", "tiny-hub"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)

    assert main(["cache", "clear"]) == 2

    assert "pass --yes" in capsys.readouterr().err
    assert list(cache_dir().glob("models--*"))


def test_cache_clear_spares_shared_hub_cache(served_models, tmp_path, capsys, monkeypatch):
    shared = tmp_path / "huggingface" / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(shared))
    assert main(["download", "tiny-hub", "--cache-dir", str(shared)]) == 0
    capsys.readouterr()

    assert main(["cache", "clear", "--cache-dir", str(shared), "--yes"]) == 2

    assert "shared Hugging Face cache" in capsys.readouterr().err
    assert list(shared.glob("models--*"))
    assert main(["cache", "clear", "--cache-dir", str(shared), "--model", "tiny-hub", "--yes"]) == 0
    assert not list(shared.glob("models--*"))
