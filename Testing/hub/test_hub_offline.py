"""Offline use of hub models: warm and cold caches, unreachable hubs, read-only caches, predict in a fresh process."""

from __future__ import annotations

import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from hub_testing import (  # noqa: F401
    cache_listing,
    fake_hub,
    hub_environment,
    make_package,
    registry_entry,
    run_screener,
    serve_package,
    write_registry,
    write_small_ct,
)
from ScreenerCore.cli import main
from ScreenerCore.hub import ModelNotCachedError
from ScreenerCore.io import read_ct
from ScreenerCore.package import load_model_package
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.registry import load_model

REPO_ID = "screener-test/tiny"


def register_served_model(hub, folder: Path, registry_folder: Path, monkeypatch) -> tuple[str, Path]:
    commit, digests = serve_package(hub, folder, REPO_ID)
    path = write_registry(registry_folder, [registry_entry("tiny-hub", REPO_ID, commit, digests)], monkeypatch)
    return commit, path


def descriptor_matches(loaded, folder: Path) -> bool:
    expected = load_file(str(folder / "descriptor.safetensors"))
    actual = loaded.model.descriptor.state_dict()
    return all(torch.equal(actual[key].cpu(), value) for key, value in expected.items())


def cache_dir() -> Path:
    return Path(os.environ["SCREENER_CACHE_DIR"])


def test_offline_warm_cache_sends_no_request(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    register_served_model(fake_hub, tiny_model_folder, tmp_path, monkeypatch)
    load_model("tiny-hub")
    assert fake_hub.requests, "warming the cache must download from the fake hub"
    fake_hub.reset_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_model("tiny-hub")

    assert descriptor_matches(loaded, tiny_model_folder)
    assert fake_hub.requests == []


def test_unreachable_hub_warm_cache_loads(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    register_served_model(fake_hub, tiny_model_folder, tmp_path, monkeypatch)
    load_model("tiny-hub")
    fake_hub.reset_requests()
    fake_hub.stop()

    loaded = load_model("tiny-hub")

    assert descriptor_matches(loaded, tiny_model_folder)
    assert fake_hub.requests == []


def test_offline_cold_cache_names_model_and_fix(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    register_served_model(fake_hub, tiny_model_folder, tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelNotCachedError) as raised:
        load_model("tiny-hub")

    message = str(raised.value)
    assert "model 'tiny-hub'" in message
    assert "HF_HUB_OFFLINE" in message
    assert str(cache_dir().resolve()) in message
    assert "screener download tiny-hub --cache-dir FOLDER" in message
    assert "SCREENER_CACHE_DIR=FOLDER" in message
    assert fake_hub.requests == []


def test_offline_branch_uses_cached_ref(fake_hub, tiny_model_folder, monkeypatch):
    commit, _ = serve_package(fake_hub, tiny_model_folder, REPO_ID)
    load_model(f"{REPO_ID}@main")
    fake_hub.reset_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_model(f"{REPO_ID}@main")

    assert loaded.folder.name == commit
    assert fake_hub.requests == []


class CaptivePortal(BaseHTTPRequestHandler):
    """HTTP handler that returns an HTML login page for every request, as a hospital proxy or captive portal may."""

    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


def test_non_hub_endpoint_cold_cache_error(tiny_model_folder, tmp_path, monkeypatch):
    portal = ThreadingHTTPServer(("127.0.0.1", 0), CaptivePortal)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{portal.server_address[1]}")
    write_registry(tmp_path, [registry_entry("tiny-hub", REPO_ID, "d" * 40, {"config.json": "e" * 64})], monkeypatch)
    try:
        with pytest.raises(ModelNotCachedError) as raised:
            load_model("tiny-hub")
    finally:
        portal.shutdown()
        portal.server_close()

    message = str(raised.value)
    assert "could not be reached" in message
    assert "X-Repo-Commit" in message
    assert "proxy" in message
    assert "screener download tiny-hub" in message


def set_read_only(folder: Path, read_only: bool) -> None:
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for root, directories, files in os.walk(folder):
        for name in directories + files + [""]:
            path = Path(root) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            path.chmod(mode & ~write_bits if read_only else mode | stat.S_IWUSR)


def test_read_only_cache_serves_weights(fake_hub, tiny_model_folder, tmp_path, monkeypatch):
    register_served_model(fake_hub, tiny_model_folder, tmp_path, monkeypatch)
    load_model("tiny-hub")
    fake_hub.reset_requests()
    before = cache_listing(cache_dir())
    set_read_only(cache_dir(), True)
    try:
        loaded = load_model("tiny-hub")
        after = cache_listing(cache_dir())
    finally:
        set_read_only(cache_dir(), False)

    assert descriptor_matches(loaded, tiny_model_folder)
    assert after == before
    assert fake_hub.requests == []


def test_predict_served_model_online_then_offline(fake_hub, tmp_path, monkeypatch):
    package = make_package(tmp_path / "package", seed=11)
    _, registry = register_served_model(fake_hub, package, tmp_path, monkeypatch)
    ct = write_small_ct(tmp_path / "ct.nii.gz")
    common = ["predict", str(ct), "--progress", "none", "--threshold-score", "0"]

    assert main(common + ["-o", str(tmp_path / "hub.nii.gz"), "--model", "tiny-hub"]) == 0
    assert fake_hub.requests, "the first run must download the model"

    # A fresh process, so huggingface_hub reads HF_HUB_OFFLINE=1 at import, as it does for users.
    fake_hub.reset_requests()
    env = {"HF_ENDPOINT": fake_hub.url, "SCREENER_CACHE_DIR": str(cache_dir()), "HF_HUB_OFFLINE": "1",
           "SCREENER_MODEL_REGISTRY": str(registry), "HF_HOME": str(tmp_path / "hf_home")}
    offline = run_screener(common + ["-o", str(tmp_path / "offline.nii.gz"), "--model", "tiny-hub"], env)
    assert offline.returncode == 0, offline.stderr
    assert fake_hub.requests == []

    expected = compute_anomaly_map(read_ct(ct), load_model_package(package), device="cpu").anomaly_map
    expected_scores = sitk.GetArrayFromImage(expected)
    assert np.ptp(expected_scores) > 0
    for name in ("hub", "offline"):
        scores = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, err_msg=name)


def test_predict_offline_cold_cache_fails(fake_hub, tiny_model_folder, tmp_path, monkeypatch, capsys):
    register_served_model(fake_hub, tiny_model_folder, tmp_path, monkeypatch)
    ct = write_small_ct(tmp_path / "ct.nii.gz")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    status = main(["predict", str(ct), "-o", str(tmp_path / "map.nii.gz"), "--model", "tiny-hub"])

    assert status == 2
    assert "screener download tiny-hub" in capsys.readouterr().err
    assert not (tmp_path / "map.nii.gz").exists()
    assert fake_hub.requests == []
