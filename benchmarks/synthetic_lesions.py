"""Synthetic-lesion benchmark: insert tumour-like blobs into a held-out CT and score the model on them.

Usage:
    python benchmarks/synthetic_lesions.py --volume CT [--volume CT ...] [--model NAME_OR_FOLDER]
        [--ignore-mask MASK ...] [--lesions-per-site 4] [--seed 0] [--save DIR] [--csv FILE]

Lesions are blobs of 5 to 50 mm diameter with soft-tissue texture and soft edges, placed in
lung, in soft tissue (liver, spleen, muscle) and in fat. Use only volumes the model was not
trained on: a training CT left out of that model's training (leave-one-volume-out), or an
evaluation CT with its real lesions passed as --ignore-mask. The script stops when a
volume's file name appears in the model's provenance.training_data. Scores are voxel AUROC and AUROC up to FPR 0.3 over
the whole volume, next to the intensity score -|HU - 40|, and per site (the lesions of one
site against all lesion-free voxels).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ScreenerCore import compute_anomaly_map, read_ct, write_image
from ScreenerCore.cli.evaluate import intensity_baseline
from ScreenerCore.metrics import auroc
from ScreenerCore.preprocessing import body_mask
from ScreenerCore.registry import load_model

MAX_FPR = 0.3


@dataclass
class Site:
    """A lesion site: its name and the lesions' mean HU range there."""

    name: str
    # Lesion mean HU is drawn from this range.
    lesion_hu: tuple[float, float]


SITES = (
    Site("lung", (20.0, 60.0)),          # solid nodule or mass in aerated lung
    Site("soft_tissue", (-30.0, 10.0)),  # hypodense lesion, e.g. a metastasis in liver or muscle
    Site("fat", (30.0, 60.0)),           # soft-tissue mass in fat, e.g. a lymph node
)


def site_candidates(hu: np.ndarray, spacing_zyx: np.ndarray) -> dict[str, np.ndarray]:
    """Return candidate lesion centres (voxel indices) per site, at least 4 mm inside the tissue.

    Computed on a grid subsampled to about 3 mm, so a 512x512x300 CT takes seconds.
    """
    stride = np.maximum(1, np.round(3.0 / spacing_zyx)).astype(int)
    coarse = hu[::stride[0], ::stride[1], ::stride[2]]
    coarse_spacing = spacing_zyx * stride
    body = body_mask(coarse, -500.0)
    smooth = ndimage.gaussian_filter(coarse, sigma=2.0 / coarse_spacing)
    masks = {
        "lung": body & (smooth < -700),
        "soft_tissue": body & (smooth > 20) & (smooth < 80),
        "fat": body & (smooth > -150) & (smooth < -60),
    }
    # 4 mm from any other tissue keeps centres off borders, where a lesion would look like an edge.
    return {name: np.argwhere(ndimage.distance_transform_edt(mask, sampling=coarse_spacing) > 4.0) * stride
            for name, mask in masks.items()}


def blob_membership(shape, centre_zyx, radius_mm: float, spacing_zyx, rng: np.random.Generator
                    ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Return the blob's bounding box and its soft membership in [0, 1] there.

    The blob is a sphere with a lobulated surface and an edge that softens over about 1 mm.
    """
    margin = radius_mm * 1.6 + 3.0
    low = np.maximum(0, np.floor(centre_zyx - margin / spacing_zyx)).astype(int)
    high = np.minimum(shape, np.ceil(centre_zyx + margin / spacing_zyx) + 1).astype(int)
    grids = np.meshgrid(*[(np.arange(lo, hi) - c) * s for lo, hi, c, s in zip(low, high, centre_zyx, spacing_zyx)],
                        indexing="ij")
    distance = np.sqrt(sum(g ** 2 for g in grids))

    # Lobulation: radius varies by up to 25 % with direction, through three random cosine lobes.
    direction = [g / np.maximum(distance, 1e-6) for g in grids]
    bump = np.zeros_like(distance)
    for _ in range(3):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        bump += np.cos(rng.integers(1, 4) * np.arccos(np.clip(sum(a * d for a, d in zip(axis, direction)), -1, 1)))
    radius = radius_mm * (1 + 0.25 * bump / 3)

    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    return box, (1 / (1 + np.exp((distance - radius) / 0.5))).astype(np.float32)


def pick_free_centre(candidates: np.ndarray, placed, radius_mm: float, spacing_zyx: np.ndarray,
                     rng: np.random.Generator, tries: int = 100) -> np.ndarray | None:
    """Return a random candidate centre at least 5 mm of gap away from every placed lesion, or None."""
    for _ in range(tries if len(candidates) else 0):
        centre = candidates[rng.integers(len(candidates))].astype(float)
        if all(np.linalg.norm(centre * spacing_zyx - other) > radius_mm + other_radius + 5.0
               for other, other_radius in placed):
            return centre
    return None


def insert_lesions(image: sitk.Image, lesions_per_site: int, rng: np.random.Generator
                   ) -> tuple[sitk.Image, np.ndarray, list[dict]]:
    """Return a copy of `image` with lesions inserted, the lesion label map, and one record per lesion.

    The label map is uint8: 0 outside lesions, k inside a lesion of SITES[k - 1].
    """
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = np.array(image.GetSpacing()[::-1])
    candidates = site_candidates(hu, spacing)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []  # centre in mm (z, y, x) and radius in mm
    records = []

    for code, site in enumerate(SITES, start=1):
        for _ in range(lesions_per_site):
            diameter = float(np.exp(rng.uniform(np.log(5.0), np.log(50.0))))
            centre = pick_free_centre(candidates[site.name], placed, diameter / 2, spacing, rng)
            if centre is None:
                continue
            placed.append((centre * spacing, diameter / 2))
            box, membership = blob_membership(hu.shape, centre, diameter / 2, spacing, rng)

            # Texture: smoothed noise of 15 HU standard deviation at about 1.5 mm correlation length.
            texture = ndimage.gaussian_filter(rng.normal(size=membership.shape).astype(np.float32), 1.5 / spacing)
            texture *= 15.0 / max(float(texture.std()), 1e-6)
            lesion_hu = rng.uniform(*site.lesion_hu) + texture
            hu[box] = hu[box] * (1 - membership) + lesion_hu * membership
            labels[box][membership > 0.5] = code
            records.append({"site": site.name, "diameter_mm": round(diameter, 1),
                            "centre_index_zyx": centre.astype(int).tolist()})

    result = sitk.GetImageFromArray(hu)
    result.CopyInformation(image)
    return result, labels, records


def site_scores(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return AUROC and AUROC up to FPR 0.3 over all lesions and per site (NaN for a site without lesions)."""
    result = {"auroc": auroc(scores, labels > 0), "partial_auroc": auroc(scores, labels > 0, MAX_FPR)}
    for code, site in enumerate(SITES, start=1):
        # One site's lesions against lesion-free voxels; the other sites' lesions leave the metric.
        keep = (labels == 0) | (labels == code)
        positives = labels[keep] == code
        result[f"auroc_{site.name}"] = auroc(scores[keep], positives) if positives.any() else float("nan")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", action="append", required=True, help="held-out CT (repeat for several)")
    parser.add_argument("--ignore-mask", action="append", default=[],
                        help="mask of real lesions to leave out of the metrics, one per --volume in the same order")
    parser.add_argument("--model", default=None, help="model name or package folder (default: bundled)")
    parser.add_argument("--lesions-per-site", type=int, default=4, help="lesions in each of lung, soft tissue, fat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="folder for the lesion CTs, labels and maps")
    parser.add_argument("--csv", type=Path, default=None, help="also write one row per volume and scorer here")
    args = parser.parse_args(argv)

    model = load_model(args.model)
    trained_on = set(model.config.provenance.get("training_data", []))
    if args.ignore_mask and len(args.ignore_mask) != len(args.volume):
        raise SystemExit("Give either no --ignore-mask or one per --volume.")
    for volume in args.volume:
        if Path(volume).name in trained_on:
            raise SystemExit(f"{volume} is in the model's training data; pick a held-out volume.")
    print(f"Model: {model.config.name} ({model.folder})")
    print()
    print("| volume | lesions | AUROC | AUROC up to FPR 0.3 | -abs(HU-40) AUROC | -abs(HU-40) up to FPR 0.3 |")
    print("|---|---|---|---|---|---|")
    rows = []
    for number, volume in enumerate(args.volume):
        host = read_ct(volume)
        ignore = None
        if args.ignore_mask:
            ignore = sitk.GetArrayFromImage(sitk.ReadImage(args.ignore_mask[number])) != 0
            if ignore.shape != sitk.GetArrayViewFromImage(host).shape:
                raise SystemExit(f"--ignore-mask {args.ignore_mask[number]} has another grid than {volume}; "
                                 "give the label map of that volume.")
        rng = np.random.default_rng(args.seed)
        image, labels, records = insert_lesions(host, args.lesions_per_site, rng)
        anomaly_map = compute_anomaly_map(image, model, name=volume).anomaly_map
        scores = sitk.GetArrayFromImage(anomaly_map)
        baseline = intensity_baseline(image, volume)
        if args.save:
            # Saved before real lesions are masked out, so the label map keeps the volume's shape.
            stem = Path(volume).name.split(".")[0]
            label_image = sitk.GetImageFromArray(labels)
            label_image.CopyInformation(image)
            for suffix, saved in (("lesions", image), ("lesions_label", label_image), ("lesions_map", anomaly_map)):
                write_image(saved, args.save / f"{stem}_{suffix}.nii.gz")
        if ignore is not None:
            # Real lesions are neither synthetic positives nor normal tissue, so they leave the metric.
            keep = ~ignore
            scores, baseline, labels = scores[keep], baseline[keep], labels[keep]
        model_row, baseline_row = site_scores(scores, labels), site_scores(baseline, labels)
        print(f"| {Path(volume).name} | {len(records)} | {model_row['auroc']:.3f} | "
              f"{model_row['partial_auroc']:.3f} | {baseline_row['auroc']:.3f} | "
              f"{baseline_row['partial_auroc']:.3f} |")
        for scorer, values in (("model", model_row), ("intensity", baseline_row)):
            rows.append({"volume": Path(volume).name, "scorer": scorer,
                         "model": model.config.name if scorer == "model" else "-",
                         "lesions": len(records), **{key: f"{value:.4f}" for key, value in values.items()}})

    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
