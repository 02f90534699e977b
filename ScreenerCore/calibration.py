"""Score calibration: where a score falls among the scores of normal (training) tissue."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CalibrationConfig

# Quantile levels stored in a model package: dense in the upper tail, where thresholds sit.
DEFAULT_LEVELS = np.concatenate([np.linspace(0.0, 0.9, 91), np.linspace(0.901, 0.999, 99),
                                 np.linspace(0.9991, 1.0, 10)])


@dataclass
class Calibration:
    """Quantiles of in-body training-voxel scores; levels in [0, 1] increase with scores."""

    levels: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_config(cls, config: CalibrationConfig) -> "Calibration | None":
        if not config.levels:
            return None
        return cls(np.asarray(config.levels, dtype=float), np.asarray(config.scores, dtype=float))

    @classmethod
    def from_scores(cls, scores: np.ndarray, levels: np.ndarray = DEFAULT_LEVELS) -> "Calibration":
        scores = np.asarray(scores, dtype=np.float64).ravel()
        return cls(np.asarray(levels, dtype=float), np.quantile(scores, levels))

    def to_config(self) -> CalibrationConfig:
        return CalibrationConfig(levels=[float(v) for v in self.levels], scores=[float(v) for v in self.scores])

    def score_for_top_percent(self, top_percent: float) -> float:
        """Return the score above which lie `top_percent` % of normal training voxels."""
        if not 0.0 <= top_percent <= 100.0:
            raise ValueError(f"Top percent must be in [0, 100], got {top_percent}.")
        return float(np.interp(1.0 - top_percent / 100.0, self.levels, self.scores))

    def top_percent_of_score(self, score: float | np.ndarray) -> float | np.ndarray:
        """Return the % of normal training voxels that score above `score` (100 at the floor, 0 at the top)."""
        return 100.0 * (1.0 - np.interp(score, self.scores, self.levels))

    @property
    def floor(self) -> float:
        return float(self.scores[0])
