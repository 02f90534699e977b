"""Voxel-level detection metrics: AUROC and AUROC up to a false-positive rate."""

from __future__ import annotations

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (false-positive rates, true-positive rates) at every distinct score, from (0, 0) to (1, 1).

    Tied scores form one threshold, so ties count as half right, as in scikit-learn.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"ROC needs both classes; got {positives} positive and {negatives} negative voxels.")

    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last index of each run of equal scores is where a threshold takes effect.
    distinct = np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.array([], dtype=int)
    ends = np.concatenate([distinct, [sorted_scores.size - 1]])
    true_positives = np.cumsum(sorted_labels)[ends]
    false_positives = (ends + 1) - true_positives
    fpr = np.concatenate([[0.0], false_positives / negatives])
    tpr = np.concatenate([[0.0], true_positives / positives])
    return fpr, tpr


def auroc(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 1.0) -> float:
    """Return the area under the ROC curve up to `max_fpr`, divided by `max_fpr`.

    With max_fpr = 1 this is the usual AUROC. With max_fpr < 1 the partial area is
    normalised by max_fpr (not McClish-corrected as scikit-learn's max_fpr is), so a
    perfect score is 1 and a random one is max_fpr / 2.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
    fpr, tpr = roc_curve(scores, labels)
    if max_fpr < 1.0:
        stop = int(np.searchsorted(fpr, max_fpr, side="right"))
        end_tpr = np.interp(max_fpr, fpr, tpr)
        fpr = np.concatenate([fpr[:stop], [max_fpr]])
        tpr = np.concatenate([tpr[:stop], [end_tpr]])
    return float(np.trapezoid(tpr, fpr) / max_fpr)
