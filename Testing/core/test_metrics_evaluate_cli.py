"""`screener evaluate` on a real CT crop with its real tumour mask."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from ScreenerCore import compute_anomaly_map, load_model_package, read_ct
from ScreenerCore.cli import main
from ScreenerCore.metrics import aupro, auroc


@pytest.fixture
def lesion_crop_folder(shared_ct, tmp_path):
    """A folder with case_image.nrrd and case_label.nrrd: 96 x 96 x 16 voxels of lung1 around its nodule."""
    image = sitk.ReadImage(str(shared_ct("eval/lung1_image.nrrd")))
    label = sitk.ReadImage(str(shared_ct("eval/lung1_label.nrrd")))
    centre = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0).astype(int)  # (z, y, x)
    size = np.array([16, 96, 96])
    start = np.clip(centre - size // 2, 0, np.array(label.GetSize()[::-1]) - size)
    index, extent = [int(v) for v in start[::-1]], [int(v) for v in size[::-1]]
    folder = tmp_path / "lung1crop"
    folder.mkdir()
    sitk.WriteImage(sitk.RegionOfInterest(image, extent, index), str(folder / "case_image.nrrd"))
    sitk.WriteImage(sitk.RegionOfInterest(label, extent, index), str(folder / "case_label.nrrd"))
    return folder


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_baseline_matches_sklearn(lesion_crop_folder, tmp_path, capsys):
    output = tmp_path / "rows.csv"

    code = main(["evaluate", str(lesion_crop_folder), "--baseline", "intensity", "--csv", str(output)])

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_crop_folder / "case_image.nrrd"))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_crop_folder / "case_label.nrrd"))) > 0
    scores = -np.abs(hu - 40.0)
    rows = read_rows(output)
    assert code == 0
    assert [row["case"] for row in rows] == ["case", "pooled"]
    assert rows[0]["dataset"] == "lung1crop"
    assert int(rows[0]["positives"]) == int(labels.sum())
    assert float(rows[0]["auroc"]) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-4)
    assert float(rows[0]["partial_auroc"]) == pytest.approx(auroc(scores, labels, 0.3), abs=1e-4)
    assert float(rows[0]["aupro"]) == pytest.approx(aupro(scores, labels, 0.3), abs=1e-4)
    # One volume: the pooled row repeats it.
    assert rows[1]["auroc"] == rows[0]["auroc"]
    assert "\\|HU - 40\\|" in capsys.readouterr().out


def test_evaluate_model_matches_pipeline(lesion_crop_folder, tiny_model_folder, tmp_path):
    output = tmp_path / "rows.csv"

    code = main(["evaluate", str(lesion_crop_folder), "--model", str(tiny_model_folder), "--device", "cpu",
                 "--csv", str(output), "--max-fpr", "0.2"])

    image = read_ct(lesion_crop_folder / "case_image.nrrd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_crop_folder / "case_label.nrrd"))) > 0
    result = compute_anomaly_map(image, load_model_package(tiny_model_folder), device="cpu")
    scores = sitk.GetArrayFromImage(result.anomaly_map)
    row = read_rows(output)[0]
    assert code == 0
    assert row["scorer"] == "tiny-test-model"
    assert float(row["max_fpr"]) == 0.2
    assert float(row["auroc"]) == pytest.approx(auroc(scores, labels), abs=1e-4)
    assert float(row["aupro"]) == pytest.approx(aupro(scores, labels, 0.2), abs=1e-4)


def test_evaluate_rejects_mask_on_other_grid(lesion_crop_folder, capsys):
    label = sitk.ReadImage(str(lesion_crop_folder / "case_label.nrrd"))
    sitk.WriteImage(label[:, :, :8], str(lesion_crop_folder / "case_label.nrrd"))

    code = main(["evaluate", str(lesion_crop_folder), "--baseline", "intensity"])

    assert code == 2
    assert "not on the CT's grid" in capsys.readouterr().err


def test_evaluate_rejects_image_without_mask(lesion_crop_folder, capsys):
    (lesion_crop_folder / "case_label.nrrd").unlink()

    code = main(["evaluate", str(lesion_crop_folder), "--baseline", "intensity"])

    assert code == 2
    assert "has no mask beside it" in capsys.readouterr().err


def test_evaluate_reads_csv_pairs(lesion_crop_folder, tmp_path):
    listing = tmp_path / "pairs.csv"
    listing.write_text("image,mask,dataset\n"
                       f"{lesion_crop_folder / 'case_image.nrrd'},{lesion_crop_folder / 'case_label.nrrd'},first\n"
                       f"lung1crop/case_image.nrrd,lung1crop/case_label.nrrd,second\n", encoding="utf-8")
    output = tmp_path / "rows.csv"

    code = main(["evaluate", str(listing), "--baseline", "intensity", "--csv", str(output)])

    rows = read_rows(output)
    assert code == 0
    assert [(row["dataset"], row["case"]) for row in rows] == [
        ("first", "case_image"), ("second", "case_image"), ("first", "pooled"), ("second", "pooled")]
    assert rows[0]["auroc"] == rows[1]["auroc"]
