"""`screener predict` end to end on the shipped example CT, through the installed console script."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from PIL import Image

from screener_testdata import EXAMPLE_CT
from ScreenerCore.io import same_geometry
from ScreenerCore.package import bundled_model_folder


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ScreenerCore", *arguments], capture_output=True, text=True,
                          timeout=900)


def test_predict_example_with_bundled_model(tmp_path):
    assert (bundled_model_folder() / "config.json").is_file(), "the bundled model package is missing"
    result = run_cli("predict", str(EXAMPLE_CT), "-o", str(tmp_path / "map.nrrd"),
                     "--preview", str(tmp_path / "preview.png"), "--findings", str(tmp_path / "findings.csv"),
                     "--progress", "none")
    assert result.returncode == 0, result.stderr

    image = sitk.ReadImage(str(EXAMPLE_CT))
    anomaly_map = sitk.ReadImage(str(tmp_path / "map.nrrd"))
    assert same_geometry(anomaly_map, image, tolerance=1e-4)
    scores = sitk.GetArrayViewFromImage(anomaly_map)
    assert np.all(np.isfinite(scores))
    assert scores.max() > scores.min()

    preview = Image.open(tmp_path / "preview.png")
    assert preview.width > 3 * 100
    assert preview.height > 100
    with open(tmp_path / "findings.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "expected at least one finding in the top 0.5 % on a CT with a 48 ml mass"
    peaks = [float(row["peak_score"]) for row in rows]
    assert peaks == sorted(peaks, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))


def test_predict_jsonl_progress(tmp_path, tiny_model_folder):
    result = run_cli("predict", str(EXAMPLE_CT), "-o", str(tmp_path / "map.nii.gz"), "--model",
                     str(tiny_model_folder), "--findings", str(tmp_path / "f.json"), "--progress", "jsonl")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["stage"] == "inference"]
    assert fractions and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert events[-1]["event"] == "done"
    assert events[-1]["outputs"]["map"] == str(tmp_path / "map.nii.gz")
    findings = json.loads((tmp_path / "f.json").read_text())
    assert len(findings) == events[-1]["findings"]


def test_missing_input_is_a_clear_error(tmp_path):
    result = run_cli("predict", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "map.nii.gz"))
    assert result.returncode == 2
    assert "nope.nii.gz" in result.stderr
    assert "not found" in result.stderr
    assert not (tmp_path / "map.nii.gz").exists()


def test_unknown_model_is_a_clear_error(tmp_path):
    result = run_cli("predict", str(EXAMPLE_CT), "-o", str(tmp_path / "map.nii.gz"), "--model", "no-such-model")
    assert result.returncode == 2
    assert "no-such-model" in result.stderr


def test_unsupported_output_suffix_is_rejected(tmp_path, tiny_model_folder):
    result = run_cli("predict", str(EXAMPLE_CT), "-o", str(tmp_path / "map.png"), "--model", str(tiny_model_folder))
    assert result.returncode == 2
    assert "map.png" in result.stderr


def test_invalid_options_fail_before_inference(tmp_path, tiny_model_folder):
    (tmp_path / "a_file").write_text("not a folder")
    cases = [
        (["--threshold", "-1"], "--threshold"),
        (["--threshold", "150"], "--threshold"),
        (["--findings", str(tmp_path / "f.txt")], "f.txt"),
        (["--preview", str(tmp_path / "p.jpg")], "p.jpg"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--device", "foo"], "foo"),
        (["--findings", str(tmp_path / "a_file" / "f.csv")], "is a file"),
    ]
    for options, expected in cases:
        output = tmp_path / "map.nii.gz"
        result = run_cli("predict", str(EXAMPLE_CT), "-o", str(output), "--model", str(tiny_model_folder),
                         "--progress", "none", *options)
        assert result.returncode == 2, (options, result.stderr)
        assert expected in result.stderr, (options, result.stderr)
        assert "Traceback" not in result.stderr, options
        assert not output.exists(), options


def test_write_error_becomes_input_error():
    import pytest

    from ScreenerCore.cli.predict import output_errors_explained
    from ScreenerCore.errors import InputError

    # Running as root defeats permission bits, so the OSError that a read-only folder gives is raised directly.
    with pytest.raises(InputError, match="Cannot write '/read-only/map.nii.gz'"):
        with output_errors_explained():
            raise PermissionError(1, "Operation not permitted", "/read-only/map.nii.gz")
