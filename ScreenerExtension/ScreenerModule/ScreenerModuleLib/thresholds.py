"""The threshold slider's scale: "top p %" to an anomaly score and back.

With a calibrated model, p is the percentage of normal training tissue that scores above the
threshold (ScreenerCore.calibration). A model without calibration falls back to the scores of
this scan's own body voxels, and the GUI shows a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ScreenerCore.calibration import DEFAULT_LEVELS, Calibration

# Body voxels sampled for the uncalibrated fallback; enough for quantiles at 0.01 % steps.
FALLBACK_SAMPLE_SIZE = 1_000_000


@dataclass
class ThresholdScale:
    """Turns a top percentage into a score threshold for one anomaly map."""

    calibration: Calibration
    # True when the percentages refer to normal training tissue, False for this scan's body voxels.
    calibrated: bool
    # Score of voxels outside the body; thresholds never go below it.
    floor: float
    max_score: float

    @classmethod
    def for_map(cls, scores: np.ndarray, calibration: dict | None, floor: float | None) -> "ThresholdScale":
        """Build the scale for a map with `scores`, from the done event's calibration and floor."""
        max_score = float(scores.max())
        floor = float(scores.min()) if floor is None else float(floor)
        if calibration and calibration.get("levels"):
            levels = np.asarray(calibration["levels"], dtype=float)
            quantiles = np.asarray(calibration["scores"], dtype=float)
            return cls(Calibration(levels, quantiles), calibrated=True, floor=floor, max_score=max_score)

        body = scores[scores > floor]
        if body.size == 0:
            body = scores.ravel()
        if body.size > FALLBACK_SAMPLE_SIZE:
            # A fixed seed keeps the slider's scores the same every time the map is shown.
            body = np.random.default_rng(0).choice(body.ravel(), FALLBACK_SAMPLE_SIZE, replace=False)
        return cls(Calibration.from_scores(body, DEFAULT_LEVELS), calibrated=False, floor=floor, max_score=max_score)

    def score_for_top_percent(self, top_percent: float) -> float:
        return max(self.calibration.score_for_top_percent(top_percent), self.floor)

    def top_percent_for_score(self, score: float) -> float:
        return float(self.calibration.top_percent_of_score(score))

    @property
    def reference(self) -> str:
        """What the percentages are of, for labels and names: "of normal tissue" or the fallback."""
        return "of normal tissue" if self.calibrated else "of this scan's body voxels"

    @property
    def note(self) -> str:
        """A warning for the GUI, empty for calibrated models."""
        return "" if self.calibrated else "The model has no calibration, so percentages refer to this scan."
