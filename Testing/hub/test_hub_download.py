"""Downloading model packages from a hub with the real huggingface_hub client, against the fake hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_testing import (  # noqa: F401
    fake_hub,
    hub_environment,
    make_package,
    registry_entry,
    serve_package,
    write_registry,
)
from ScreenerCore.errors import ModelPackageError
from ScreenerCore.hub import HubDownloadError, IntegrityError
from ScreenerCore.registry import load_model, resolve_model_folder

REPO_ID = "screener-test/tiny"


def assert_same_weights(loaded, folder: Path) -> None:
    expected = load_file(str(folder / "descriptor.safetensors"))
    actual = loaded.model.descriptor.state_dict()
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key].cpu(), value), key


def cache_root() -> Path:
    return Path(os.environ["SCREENER_CACHE_DIR"])


def blob_digests() -> set[str]:
    """Return the SHA-256 of every blob in the cache."""
    return {hashlib.sha256(path.read_bytes()).hexdigest() for path in cache_root().glob("models--*/blobs/*")}


def test_registry_model_downloads_verifies_and_loads(fake_hub, tiny_model_folder, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder)
    write_registry(cache_root().parent, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)

    loaded = load_model("tiny-hub")

    assert_same_weights(loaded, tiny_model_folder)
    assert loaded.folder.is_relative_to(cache_root())
    assert loaded.folder.name == commit
    resolve_paths = [r.path for r in fake_hub.requests if r.server == "hub"]
    assert resolve_paths, "the model must have been downloaded from the fake hub"
    assert all(f"/resolve/{commit}/" in path for path in resolve_paths)
    # Safetensors files travel through the CDN redirect, as LFS files do on the real hub.
    assert len([r for r in fake_hub.requests if r.server == "cdn"]) == 3


def test_corrupted_download_is_deleted_and_reported(fake_hub, tiny_model_folder, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder)
    write_registry(cache_root().parent, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)
    descriptor = (tiny_model_folder / "descriptor.safetensors").read_bytes()
    fake_hub.corrupt(descriptor)

    with pytest.raises(IntegrityError) as raised:
        load_model("tiny-hub")

    message = str(raised.value)
    assert "descriptor.safetensors" in message
    assert "deleted" in message
    assert "screener download tiny-hub" in message
    assert "density.safetensors" not in message
    snapshot = cache_root() / "models--screener-test--tiny" / "snapshots" / commit
    assert not (snapshot / "descriptor.safetensors").exists()
    assert (snapshot / "density.safetensors").is_file()
    assert fake_hub.replacements[digests["descriptor.safetensors"]] not in {
        path.read_bytes() for path in cache_root().glob("models--*/blobs/*")}

    # Once the hub serves the right bytes, the next load fetches only the deleted file.
    fake_hub.replacements.clear()
    fake_hub.reset_requests()
    loaded = load_model("tiny-hub")
    assert_same_weights(loaded, tiny_model_folder)
    fetched = [r.path for r in fake_hub.requests if r.server == "hub"]
    assert fetched == [f"/{REPO_ID}/resolve/{commit}/descriptor.safetensors"]


def test_wrong_registry_hash_fails_closed(fake_hub, tiny_model_folder, monkeypatch):
    commit, digests = serve_package(fake_hub, tiny_model_folder)
    digests["density.safetensors"] = "0" * 64
    write_registry(cache_root().parent, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)

    for attempt in range(2):
        with pytest.raises(IntegrityError) as raised:
            load_model("tiny-hub")
        assert "density.safetensors" in str(raised.value)
        assert "the registry expects " + "0" * 64 in str(raised.value)
    served = hashlib.sha256((tiny_model_folder / "density.safetensors").read_bytes()).hexdigest()
    assert served not in blob_digests()
    with pytest.raises(IntegrityError):
        resolve_model_folder("tiny-hub")


def test_pinned_revision_ignores_branch_update(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    pinned, digests = serve_package(fake_hub, tiny_model_folder)
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, pinned, digests)], monkeypatch)
    newer_folder = make_package(tmp_path / "newer", seed=7)
    newer = fake_hub.push_folder(REPO_ID, newer_folder)
    assert fake_hub.repos[REPO_ID].refs["main"] == newer != pinned

    loaded = load_model("tiny-hub")

    assert_same_weights(loaded, tiny_model_folder)
    assert loaded.folder.name == pinned
    assert all("/resolve/main/" not in r.path for r in fake_hub.requests)
    # The branch really moved: following it gives the newer weights.
    assert_same_weights(load_model(f"{REPO_ID}@main"), newer_folder)


def test_repo_at_commit_uses_repo_checksums(fake_hub, tiny_model_folder):
    commit, _ = serve_package(fake_hub, tiny_model_folder)

    loaded = load_model(f"{REPO_ID}@{commit}")

    assert_same_weights(loaded, tiny_model_folder)
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in fake_hub.requests if r.method == "HEAD")
    assert fetched == ["checksums.json", "condition.safetensors", "config.json", "density.safetensors",
                       "descriptor.safetensors"]


def test_repo_at_commit_detects_corruption(fake_hub, tiny_model_folder):
    commit, _ = serve_package(fake_hub, tiny_model_folder)
    fake_hub.corrupt((tiny_model_folder / "condition.safetensors").read_bytes())

    with pytest.raises(IntegrityError) as raised:
        load_model(f"{REPO_ID}@{commit}")

    assert "condition.safetensors" in str(raised.value)
    assert "checksums.json expects" in str(raised.value)


@pytest.mark.parametrize("spec, expected", [
    ("nobody/missing@" + "a" * 40, "was not found, or it is private"),
    (f"{REPO_ID}@" + "b" * 40, "Revision"),
    (f"{REPO_ID}@no-such-branch", "Revision 'no-such-branch' was not found"),
])
def test_hub_lookup_errors_name_the_problem(fake_hub, tiny_model_folder, spec, expected):
    serve_package(fake_hub, tiny_model_folder)

    with pytest.raises(HubDownloadError) as raised:
        load_model(spec)

    assert expected in str(raised.value)


def test_repo_without_checksums_is_rejected(fake_hub, tiny_model_folder):
    files = {path.name: path.read_bytes() for path in tiny_model_folder.iterdir() if path.name != "checksums.json"}
    commit = fake_hub.push(REPO_ID, files)

    with pytest.raises(HubDownloadError) as raised:
        load_model(f"{REPO_ID}@{commit}")

    assert "checksums.json" in str(raised.value)


class CreateFolderWhenUnpickled:
    """A pickle payload: unpickling it calls os.mkdir, as a malicious checkpoint could call anything."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (str(self.folder),)


def test_pickle_disguised_as_safetensors_is_never_unpickled(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    marker = tmp_path / "created-by-unpickling"
    payload = pickle.dumps(CreateFolderWhenUnpickled(marker))
    files = {path.name: path.read_bytes() for path in tiny_model_folder.iterdir()}
    files["descriptor.safetensors"] = payload
    commit = fake_hub.push(REPO_ID, files)
    digests = {name: hashlib.sha256(files[name]).hexdigest() for name in
               ("config.json", "descriptor.safetensors", "condition.safetensors", "density.safetensors")}
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)

    with pytest.raises(ModelPackageError) as raised:
        load_model("tiny-hub")

    assert "descriptor.safetensors" in str(raised.value)
    assert "safetensors" in str(raised.value)
    assert not marker.exists()
    # The payload is live: unpickling it, as torch.load would, runs its code.
    pickle.loads(payload)
    assert marker.is_dir()


def test_registry_entry_naming_pickle_file_is_rejected(fake_hub, tmp_path, monkeypatch):
    digests = {"config.json": "1" * 64, "pytorch_model.bin": "2" * 64}
    write_registry(tmp_path, [registry_entry("pickled", REPO_ID, "c" * 40, digests)], monkeypatch)

    with pytest.raises(ModelPackageError) as raised:
        load_model("pickled")

    assert "pytorch_model.bin" in str(raised.value)
    assert "pickle" in str(raised.value)
    assert fake_hub.requests == []


def test_corrupted_repo_checksums_are_deleted(fake_hub, tiny_model_folder):
    files = {path.name: path.read_bytes() for path in tiny_model_folder.iterdir()}
    files["checksums.json"] = b'{"config.json": "not a digest"}'
    commit = fake_hub.push(REPO_ID, files)

    with pytest.raises(IntegrityError) as raised:
        load_model(f"{REPO_ID}@{commit}")

    assert "checksums.json" in str(raised.value)
    assert "expected 64 hexadecimal digits" in str(raised.value)
    assert "deleted from the cache" in str(raised.value)
    snapshot = cache_root() / "models--screener-test--tiny" / "snapshots" / commit
    assert not (snapshot / "checksums.json").exists()
