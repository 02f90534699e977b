"""`screener-publish`: upload_folder to the fake hub, then load the model through the printed registry entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_testing import fake_hub, hub_environment, make_package, package_digests, write_registry  # noqa: F401
from ScreenerCore.registry import load_model
from screener_training.model_card import write_model_card
from screener_training.publish import main as publish_main

REPO_ID = "screener-test/published"


@pytest.fixture
def exported_package(tmp_path) -> Path:
    """A package as the training export writes it: weights, config.json, checksums.json and the model card."""
    folder = make_package(tmp_path / "export", seed=21)
    loaded = load_model(str(folder))
    write_model_card(folder, loaded.config)
    return folder


def publish(arguments: list[str], capsys) -> tuple[int, dict | None, str]:
    status = publish_main(arguments)
    output = capsys.readouterr()
    entry = json.loads(output.out) if status == 0 else None
    return status, entry, output.err


def test_publish_then_load_pinned(fake_hub, exported_package, tmp_path, capsys, monkeypatch):
    registry = tmp_path / "site-registry.json"
    status, entry, err = publish([str(exported_package), "--repo-id", REPO_ID, "--create-repo", "--name",
                                  "published-tiny", "--registry-out", str(registry)], capsys)

    assert status == 0, err
    commit = fake_hub.repos[REPO_ID].refs["main"]
    assert entry["revision"] == commit
    assert f"Pin this revision in the registry: {commit}" in err
    assert entry["sha256"] == package_digests(exported_package)
    assert sorted(fake_hub.repos[REPO_ID].commits[commit]) == sorted(
        ["README.md", "checksums.json", "config.json", "condition.safetensors", "density.safetensors",
         "descriptor.safetensors"])
    assert json.loads(registry.read_text())["models"] == [entry]

    monkeypatch.setenv("SCREENER_MODEL_REGISTRY", str(registry))
    loaded = load_model("published-tiny")
    assert loaded.folder.name == commit
    expected = load_file(str(exported_package / "density.safetensors"))
    for key, value in loaded.model.density.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_republish_keeps_old_pin(fake_hub, exported_package, tmp_path, capsys, monkeypatch):
    _, first, _ = publish([str(exported_package), "--repo-id", REPO_ID, "--create-repo"], capsys)
    retrained = make_package(tmp_path / "retrained", seed=22)
    _, second, _ = publish([str(retrained), "--repo-id", REPO_ID], capsys)

    assert second["revision"] != first["revision"]
    assert fake_hub.repos[REPO_ID].refs["main"] == second["revision"]
    write_registry(tmp_path, [first], monkeypatch)
    loaded = load_model(first["name"])
    assert loaded.folder.name == first["revision"]
    expected = load_file(str(exported_package / "descriptor.safetensors"))
    for key, value in loaded.model.descriptor.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_publish_rejects_pickle_file(fake_hub, exported_package, capsys):
    torch.save({"weights": torch.zeros(2)}, exported_package / "extra.pt")

    status, _, err = publish([str(exported_package), "--repo-id", REPO_ID, "--create-repo"], capsys)

    assert status == 2
    assert "extra.pt" in err
    assert "pickle" in err
    assert fake_hub.requests == []


def test_publish_rejects_changed_weights(fake_hub, exported_package, tmp_path, capsys):
    other = make_package(tmp_path / "other", seed=23)
    shutil.copy(other / "density.safetensors", exported_package / "density.safetensors")

    status, _, err = publish([str(exported_package), "--repo-id", REPO_ID, "--create-repo"], capsys)

    assert status == 2
    assert "density.safetensors" in err
    assert "SHA-256" in err
    assert fake_hub.requests == []


def test_publish_rejects_invalid_name(fake_hub, exported_package, capsys):
    status, _, err = publish([str(exported_package), "--repo-id", REPO_ID, "--name", "a/b"], capsys)

    assert status == 2
    assert "the name must start with a letter or digit" in err
    assert fake_hub.requests == []
