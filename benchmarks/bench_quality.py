"""Score a model on the evaluation CTs: voxel AUROC and AUROC up to FPR 0.3, beside -|HU - 40|.

Usage:
    python benchmarks/bench_quality.py [--model NAME_OR_FOLDER] [--eval-dir DIR] [--previews DIR]

Prints a markdown table; with --previews, also writes one PNG preview per volume. The table
also splits each lesion into its core (voxels more than CORE_DEPTH_MM inside its surface)
and its rim, and gives the AUROC of each part against all normal voxels, because a map can
mark a mass's edge and miss its uniform interior.
The evaluation volumes are for measuring only; no model may be trained on them.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ScreenerCore import compute_anomaly_map, read_ct
from ScreenerCore.cli.evaluate import intensity_baseline
from ScreenerCore.metrics import auroc
from ScreenerCore.preview import write_preview
from ScreenerCore.registry import load_model

DEFAULT_EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "eval"
CASES = ("lung1", "lung2")
MAX_FPR = 0.3
CORE_DEPTH_MM = 5.0


def core_and_rim_auroc(scores: np.ndarray, labels: np.ndarray, spacing_zyx) -> tuple[float, float]:
    """Return the AUROC of the lesion's core and of its rim, each against all normal voxels (NaN if empty)."""
    depth = ndimage.distance_transform_edt(labels, sampling=spacing_zyx)
    core = depth > CORE_DEPTH_MM
    rim = labels & ~core
    normal = ~labels
    result = []
    for part in (core, rim):
        keep = normal | part
        result.append(auroc(scores[keep], part[keep]) if part.any() else float("nan"))
    return result[0], result[1]


def evaluate_case(case: str, eval_dir: Path, model, preview_dir: Path | None, top_percent: float) -> dict:
    image = read_ct(eval_dir / f"{case}_image.nrrd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(eval_dir / f"{case}_label.nrrd"))) > 0

    started = time.perf_counter()
    result = compute_anomaly_map(image, model, name=case)
    seconds = time.perf_counter() - started
    scores = sitk.GetArrayFromImage(result.anomaly_map)

    if preview_dir is not None and result.calibration is not None:
        threshold = result.calibration.score_for_top_percent(top_percent)
        # Centre the preview on the lesion so the PNG shows what the metric measures.
        lesion = np.argwhere(labels).mean(axis=0)[::-1]
        centre = result.anomaly_map.TransformContinuousIndexToPhysicalPoint(lesion.tolist())
        write_preview(image, result.anomaly_map, threshold, preview_dir / f"{case}_preview.png", centre)

    baseline = intensity_baseline(image, case)
    spacing_zyx = image.GetSpacing()[::-1]
    core, rim = core_and_rim_auroc(scores, labels, spacing_zyx)
    baseline_core, baseline_rim = core_and_rim_auroc(baseline, labels, spacing_zyx)
    return {
        "case": case,
        "lesion_ml": float(labels.sum() * np.prod(image.GetSpacing()) / 1000),
        "auroc": auroc(scores, labels),
        "pauroc": auroc(scores, labels, MAX_FPR),
        "baseline_auroc": auroc(baseline, labels),
        "baseline_pauroc": auroc(baseline, labels, MAX_FPR),
        "core": core, "rim": rim, "baseline_core": baseline_core, "baseline_rim": baseline_rim,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or package folder (default: bundled)")
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR, help="folder with *_image.nrrd and *_label.nrrd")
    parser.add_argument("--previews", type=Path, default=None, help="folder for PNG previews")
    parser.add_argument("--top-percent", type=float, default=0.5, help="preview threshold, top %% of normal tissue")
    args = parser.parse_args()

    model = load_model(args.model)
    rows = [evaluate_case(case, args.eval_dir, model, args.previews, args.top_percent) for case in CASES]

    print(f"Model: {model.config.name} ({model.folder}); {date.today()}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads")
    print()
    print("| volume | lesion ml | AUROC | AUROC up to FPR 0.3 | AUROC core / rim | -abs(HU-40) AUROC | "
          "-abs(HU-40) up to FPR 0.3 | -abs(HU-40) core / rim | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['lesion_ml']:.1f} | {row['auroc']:.3f} | {row['pauroc']:.3f} | "
              f"{row['core']:.3f} / {row['rim']:.3f} | {row['baseline_auroc']:.3f} | {row['baseline_pauroc']:.3f} | "
              f"{row['baseline_core']:.3f} / {row['baseline_rim']:.3f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
