"""The synthetic-lesion benchmark's lesion insertion and site metrics, on the shipped example CT."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from screener_testdata import EXAMPLE_CT, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from synthetic_lesions import SITES, insert_lesions, site_scores  # noqa: E402

# Inside a lesion, 3 in-plane voxels (about 1.9 mm on the example's 0.63 mm grid) from its
# label edge, the host still contributes about 2 % (the edge softens over 0.5 mm), which is
# under 20 HU next to lung. Texture averages out over the lesion.
MEAN_HU_TOLERANCE = 25.0
# Changes below this are the soft edge's tail, which reaches the lesion's bounding box.
VISIBLE_CHANGE_HU = 5.0


@pytest.fixture(scope="module")
def inserted():
    image = sitk.ReadImage(str(EXAMPLE_CT))
    before = sitk.GetArrayFromImage(image).copy()
    lesion_image, labels, records = insert_lesions(image, 2, np.random.default_rng(0))
    return image, before, lesion_image, labels, records


def test_input_image_unchanged(inserted):
    image, before, *_ = inserted

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)


def test_output_keeps_geometry(inserted):
    image, _, lesion_image, labels, _ = inserted

    assert lesion_image.GetSize() == image.GetSize()
    assert lesion_image.GetSpacing() == image.GetSpacing()
    assert lesion_image.GetOrigin() == image.GetOrigin()
    assert labels.shape == sitk.GetArrayFromImage(image).shape


def test_lesions_placed_at_every_site(inserted):
    *_, labels, records = inserted

    assert {record["site"] for record in records} == {site.name for site in SITES}
    assert set(np.unique(labels)) == {0, *range(1, len(SITES) + 1)}


def test_record_centres_carry_their_site_label(inserted):
    *_, labels, records = inserted
    codes = {site.name: code for code, site in enumerate(SITES, start=1)}

    for record in records:
        assert labels[tuple(record["centre_index_zyx"])] == codes[record["site"]], record


def test_lesion_intensity_matches_site_range(inserted):
    *_, lesion_image, labels, _ = inserted
    hu = sitk.GetArrayFromImage(lesion_image)

    in_plane = np.zeros((1, 3, 3), dtype=bool)
    in_plane[0, 1, :] = in_plane[0, :, 1] = True
    for code, site in enumerate(SITES, start=1):
        interior = ndimage.binary_erosion(labels == code, in_plane, iterations=3)
        assert interior.any(), site.name
        mean = float(hu[interior].mean())
        low, high = site.lesion_hu
        assert low - MEAN_HU_TOLERANCE <= mean <= high + MEAN_HU_TOLERANCE, (site.name, mean)


def test_image_changes_only_near_lesions(inserted):
    _, before, lesion_image, labels, _ = inserted
    changed = np.abs(sitk.GetArrayFromImage(lesion_image) - before) > VISIBLE_CHANGE_HU

    # The soft edge reaches a few voxels past the 0.5 membership that defines the label.
    near = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray((labels > 0).astype(np.uint8)),
                                                     [6, 6, 3])) > 0
    assert changed.any()
    assert not (changed & ~near).any()


def test_site_scores_of_perfect_and_inverted_scorers():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 3], dtype=np.uint8)

    perfect = site_scores(labels.astype(float), labels)
    inverted = site_scores(-labels.astype(float), labels)

    assert perfect["auroc"] == pytest.approx(1.0)
    assert inverted["auroc"] == pytest.approx(0.0)
    for site in SITES:
        assert perfect[f"auroc_{site.name}"] == pytest.approx(1.0)


def test_site_scores_nan_for_absent_site():
    labels = np.array([0, 0, 1, 1], dtype=np.uint8)

    scores = site_scores(np.array([0.0, 0.1, 0.9, 1.0]), labels)

    assert np.isnan(scores["auroc_fat"])
    assert scores["auroc_lung"] == pytest.approx(1.0)
