"""Score smoothing at lesion scale: does a Gaussian filter on the model-grid map raise AUROC?

Usage:
    python benchmarks/smoothing_sweep.py [--model NAME_OR_FOLDER] [--sigmas-mm 0 2 4 6]

Runs the model once per case (lung1, lung2, and both with synthetic lesions, real lesions
left out), then smooths the model-grid map with each sigma and scores it on the input grid.
Prints one markdown row per sigma: AUROC and AUROC up to FPR 0.3 per case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ScreenerCore import compute_anomaly_map, read_ct
from ScreenerCore.metrics import auroc
from ScreenerCore.preprocessing import to_input_grid
from ScreenerCore.registry import load_model

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_lesions import insert_lesions  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "eval"


def cases():
    """Yield (name, image, positive mask, mask of voxels to score) for each case."""
    for case in ("lung1", "lung2"):
        image = read_ct(EVAL_DIR / f"{case}_image.nrrd")
        real = sitk.GetArrayFromImage(sitk.ReadImage(str(EVAL_DIR / f"{case}_label.nrrd"))) > 0
        yield case, image, real, np.ones_like(real)
        lesion_image, synthetic, _ = insert_lesions(image, 4, np.random.default_rng(0))
        yield f"{case}+synthetic", lesion_image, synthetic > 0, ~real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or package folder (default: bundled)")
    parser.add_argument("--sigmas-mm", nargs="+", type=float, default=[0.0, 2.0, 4.0, 6.0])
    args = parser.parse_args()
    model = load_model(args.model)
    # Sweep from the raw map: switch off the package's own smoothing.
    model.config.preprocessing.score_smoothing_mm = 0.0

    results = {sigma: [] for sigma in args.sigmas_mm}
    names = []
    for name, image, positives, keep in cases():
        names.append(name)
        result = compute_anomaly_map(image, model, name=name)
        spacing_zyx = np.array(result.model_grid.reference.GetSpacing()[::-1])
        for sigma in args.sigmas_mm:
            grid_map = result.model_grid_map
            if sigma > 0:
                grid_map = ndimage.gaussian_filter(grid_map, sigma / spacing_zyx)
            scores = sitk.GetArrayFromImage(to_input_grid(grid_map, result.model_grid.reference, image, result.floor))
            results[sigma].append((auroc(scores[keep], positives[keep]), auroc(scores[keep], positives[keep], 0.3)))

    print(f"Model: {model.config.name} ({model.folder})")
    print()
    print("| sigma mm | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for sigma, row in results.items():
        print(f"| {sigma:g} | " + " | ".join(f"{a:.3f} / {p:.3f}" for a, p in row) + " |")


if __name__ == "__main__":
    main()
