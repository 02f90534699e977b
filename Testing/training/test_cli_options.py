"""`screener-train run` trains and exports every condition and density option from one command."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from ScreenerCore import compute_anomaly_map, load_model_package, read_ct
from screener_training.cli import main

TINY = ["--spacing", "6", "6", "6", "--patch-size", "32", "--crop-size", "16", "--channels", "4", "8",
        "--descriptor-dim", "4", "--condition-dim", "4", "--positions", "16", "--volumes-per-step", "2",
        "--descriptor-steps", "2", "--condition-steps", "2", "--density-steps", "2", "--calibration-crops", "1",
        "--projector-width", "16", "--density-hidden", "8", "--flow-steps", "2", "--sincos-frequencies", "2",
        "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_descriptor(small_ct_files, tmp_path_factory):
    """One shared descriptor and condition net, so each option only trains its density."""
    work = tmp_path_factory.mktemp("shared_nets")
    data = ["--data", *map(str, small_ct_files)]
    assert main(["descriptor", *data, "--work-dir", str(work), *TINY]) == 0
    assert main(["condition", *data, "--work-dir", str(work), *TINY]) == 0
    return work


@pytest.mark.parametrize("condition", ["none", "sincos", "masked"])
@pytest.mark.parametrize("density", ["gaussian", "flow"])
def test_density_and_export_for_each_option(condition, density, trained_descriptor, small_ct_files, tmp_path):
    output = tmp_path / "package"
    data = ["--data", *map(str, small_ct_files)]

    code = main(["density", *data, "--work-dir", str(tmp_path / "work"), "--cache-dir",
                 str(trained_descriptor / "cache"), "--descriptor-from", str(trained_descriptor),
                 "--condition-from", str(trained_descriptor), "--output", str(output),
                 "--condition", condition, "--density", density, *TINY])

    config = json.loads((output / "config.json").read_text())
    loaded = load_model_package(output)
    image = sitk.RegionOfInterest(read_ct(small_ct_files[0]), [64, 64, 40], [20, 20, 20])
    scores = sitk.GetArrayFromImage(compute_anomaly_map(image, loaded).anomaly_map)
    assert code == 0
    assert config["condition"]["kind"] == condition
    assert config["density"]["kind"] == density
    assert len(config["calibration"]["scores"]) > 10
    assert config["provenance"]["stage_seconds"]["density"] is not None
    assert scores.std() > 0


def test_run_trains_all_stages_with_infonce(small_ct_files, tmp_path):
    output = tmp_path / "package"

    code = main(["run", "--data", *map(str, small_ct_files), "--work-dir", str(tmp_path / "work"),
                 "--output", str(output), "--objective", "infonce", "--temperature", "0.2",
                 "--condition", "masked", "--density", "flow", *TINY])

    log = (tmp_path / "work" / "descriptor_log.csv").read_text().splitlines()
    assert code == 0
    assert log[0].startswith("step,seconds,loss,infonce,accuracy")
    assert (tmp_path / "work" / "condition.safetensors").is_file()
    assert load_model_package(output).config.density.kind == "flow"


def test_export_requires_output(small_ct_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--data", *map(str, small_ct_files), "--work-dir", str(tmp_path)])

    assert "--output is required" in capsys.readouterr().err


def test_density_reports_missing_descriptor(small_ct_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="screener-train descriptor"):
        main(["density", "--data", *map(str, small_ct_files), "--work-dir", str(tmp_path), *TINY])
