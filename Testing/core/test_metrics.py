"""AUROC, partial AUROC and AUPRO against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve as sklearn_roc_curve

from ScreenerCore.metrics import aupro, auroc, collect_volume_scores, detection_metrics, roc_curve


def sklearn_partial_area(scores, labels, max_fpr):
    """Area under scikit-learn's ROC curve up to max_fpr, linearly interpolated at the cut, over max_fpr."""
    fpr, tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.concatenate([fpr[:stop], [max_fpr]])
    y = np.concatenate([tpr[:stop], [np.interp(max_fpr, fpr, tpr)]])
    return np.trapezoid(y, x) / max_fpr


def test_auroc_hand_computed_case():
    # Positives 0.9 and 0.4; negatives 0.8, 0.3, 0.2: of 6 pairs, 5 are ordered right.
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2])
    labels = np.array([1, 0, 1, 0, 0], dtype=bool)

    assert auroc(scores, labels) == pytest.approx(5 / 6)


def test_auroc_ties_count_half():
    scores = np.array([1.0, 1.0, 0.0])
    labels = np.array([True, False, False])

    assert auroc(scores, labels) == pytest.approx(0.75)


def test_partial_auroc_hand_computed_case():
    # ROC: (0, 0) -> (0, 0.5) -> (1/3, 0.5) -> (1/3, 1) -> (1, 1). Up to FPR 0.3 the TPR is 0.5.
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2])
    labels = np.array([1, 0, 1, 0, 0], dtype=bool)

    assert auroc(scores, labels, max_fpr=0.3) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.05
    # Rounded scores create many ties between and within classes.
    scores = np.round(rng.normal(size=5000) + 1.5 * labels, 1).astype(np.float32)

    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for max_fpr in (0.05, 0.3, 0.77):
        assert auroc(scores, labels, max_fpr) == pytest.approx(sklearn_partial_area(scores, labels, max_fpr),
                                                               abs=1e-12)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300), 1)

    fpr, tpr = roc_curve(scores, labels)
    expected_fpr, expected_tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)

    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)


def test_aupro_two_regions_of_different_size():
    """A big region found first, then a small one: AUPRO weighs regions, not voxels."""
    scores = np.zeros((4, 4, 4), dtype=np.float32)
    labels = np.zeros((4, 4, 4), dtype=bool)
    labels[0, 0, 0:3] = True  # region 1: 3 voxels
    labels[3, 3, 3] = True  # region 2: 1 voxel, far from region 1
    scores[0, 0, 0:3] = 5.0
    scores[3, 3, 3] = 2.0
    # 60 negatives: 12 at 3.0 (between the regions' scores), 48 at 0.0.
    negatives = np.flatnonzero(~labels.ravel())
    scores.ravel()[negatives[:12]] = 3.0

    # PRO curve: (0, 0) -> (0, 0.5) -> (0.2, 0.5) -> (0.2, 1) -> (1, 1).
    # Up to FPR 0.3: 0.2 * 0.5 + 0.1 * 1 = 0.2, divided by 0.3.
    assert aupro(scores, labels, max_fpr=0.3) == pytest.approx(0.2 / 0.3)
    # The voxel ROC weighs the 3-voxel region 3/4: 0.2 * 0.75 + 0.1 * 1 = 0.25, over 0.3.
    assert auroc(scores, labels, max_fpr=0.3) == pytest.approx(0.25 / 0.3)


def test_regions_are_26_connected():
    labels = np.zeros((4, 4, 4), dtype=bool)
    labels[0, 0, 0] = True
    labels[1, 1, 1] = True  # touches the first voxel only at a corner
    labels[3, 3, 0] = True  # touches nothing

    volume = collect_volume_scores(np.zeros((4, 4, 4)), labels)

    assert sorted(volume.region_sizes.tolist()) == [1, 2]


def test_aupro_equals_auroc_for_one_region():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(6, 6, 6))
    labels = np.zeros((6, 6, 6), dtype=bool)
    labels[2:4, 2:4, 2:4] = True
    scores[labels] += 1.0

    assert aupro(scores, labels, 0.3) == pytest.approx(auroc(scores, labels, 0.3), abs=1e-12)


def brute_force_aupro(volumes, max_fpr):
    """PRO curve through every distinct score of (scores, regions) pairs; regions are integer maps, 0 = normal."""
    scores = np.concatenate([s.ravel() for s, _ in volumes])
    negatives = np.concatenate([s[r == 0] for s, r in volumes])
    regions = [s[r == k] for s, r in volumes for k in range(1, r.max() + 1)]
    fpr, pro = [0.0], [0.0]
    for threshold in np.unique(scores)[::-1]:
        fpr.append(np.mean(negatives >= threshold))
        pro.append(np.mean([np.mean(region >= threshold) for region in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.concatenate([fpr[:stop], [max_fpr]])
    y = np.concatenate([pro[:stop], [np.interp(max_fpr, fpr, pro)]])
    return np.trapezoid(y, x) / max_fpr


def test_pooled_metrics_match_brute_force():
    rng = np.random.default_rng(5)
    first_scores = np.round(rng.normal(size=(5, 6, 7)), 1)
    second_scores = np.round(rng.normal(size=(4, 6, 7)) + 0.3, 1)
    first_regions = np.zeros((5, 6, 7), dtype=int)
    second_regions = np.zeros((4, 6, 7), dtype=int)
    first_regions[1:3, 1:3, 1:3] = 1
    second_regions[0, 0, 0] = 1
    second_regions[2:4, 4:6, 5:7] = 2
    for scores, regions in ((first_scores, first_regions), (second_scores, second_regions)):
        scores[regions > 0] += 1.0

    pooled = detection_metrics([collect_volume_scores(first_scores, first_regions > 0),
                                collect_volume_scores(second_scores, second_regions > 0)], 0.3)
    all_labels = np.concatenate([first_regions.ravel(), second_regions.ravel()]) > 0
    all_scores = np.concatenate([first_scores.ravel(), second_scores.ravel()])

    assert pooled.regions == 3
    assert pooled.positives == 8 + 1 + 8
    assert pooled.voxels == all_scores.size
    assert pooled.auroc == pytest.approx(roc_auc_score(all_labels, all_scores), abs=1e-12)
    assert pooled.partial_auroc == pytest.approx(sklearn_partial_area(all_scores, all_labels, 0.3), abs=1e-12)
    expected_aupro = brute_force_aupro([(first_scores, first_regions), (second_scores, second_regions)], 0.3)
    assert pooled.aupro == pytest.approx(expected_aupro, abs=1e-12)


def test_exact_metrics_on_large_volume():
    """A 16 M-voxel float32 map gives the exact Mann-Whitney AUROC."""
    rng = np.random.default_rng(6)
    scores = rng.random((256, 256, 256), dtype=np.float32)
    labels = np.zeros(scores.shape, dtype=bool)
    labels[100:110, 100:120, 50:60] = True
    scores[labels] = scores[labels] * 0.5 + 0.5

    # Every negative is uniform on [0, 1) and every positive on [0.5, 1): AUROC = 0.75 up to sampling noise,
    # and the exact value is the Mann-Whitney statistic, computed here from sorted negatives independently.
    negatives = np.sort(scores[~labels])
    positives = scores[labels]
    below = np.searchsorted(negatives, positives, side="left")
    equal = np.searchsorted(negatives, positives, side="right") - below
    expected = (below + 0.5 * equal).sum() / (positives.size * negatives.size)

    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert auroc(scores, labels) == pytest.approx(0.75, abs=0.01)


def test_metrics_reject_one_class():
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.arange(5.0), np.zeros(5, dtype=bool))


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="resample the mask"):
        auroc(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))


def test_metrics_reject_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan, 1.0]), np.array([True, False]))
