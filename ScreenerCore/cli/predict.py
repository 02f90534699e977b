"""`screener predict`: anomaly map, preview and findings of one CT file or DICOM folder."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from ..batch import DEFAULT_MAP_SUFFIX, is_batch_input, run_batch
from ..calibration import Calibration
from ..device import resolve_device
from ..errors import InputError, ScreenerError
from ..findings import find_findings, write_findings
from ..io import OUTPUT_SUFFIXES, check_output_path, has_suffix, read_ct, write_image
from ..pipeline import compute_anomaly_map
from ..preview import write_preview
from ..registry import load_model

logger = logging.getLogger(__name__)

DEFAULT_TOP_PERCENT = 0.5


class JsonLinesReporter:
    """Writes one JSON object per line to stdout, for programs (such as the Slicer module) that run the CLI."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream

    def emit(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def progress(self, stage: str, fraction: float) -> None:
        self.emit("progress", stage=stage, fraction=round(float(fraction), 4))


class BarReporter:
    """Shows a tqdm progress bar on stderr for the inference stage."""

    def __init__(self):
        self.bar = None

    def progress(self, stage: str, fraction: float) -> None:
        if stage == "inference":
            if self.bar is None:
                # No rate in the bar: progress arrives as a fraction, so tqdm's rate would be per percent.
                self.bar = tqdm(total=100, desc="scoring patches", file=sys.stderr,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed")
            self.bar.n = round(100 * fraction)
            self.bar.refresh()
        elif stage == "resample" and self.bar is not None:
            self.bar.close()

    def emit(self, event: str, **fields) -> None:
        pass


def score_threshold(args: argparse.Namespace, calibration: Calibration | None, floor: float) -> float:
    """Turn --threshold (top % of normal tissue) or --threshold-score into a score threshold."""
    if args.threshold_score is not None:
        return args.threshold_score
    if calibration is None:
        raise ScreenerError("This model has no score calibration, so --threshold cannot be used; "
                            "pass --threshold-score with a raw score instead.")
    return calibration.score_for_top_percent(args.threshold)


def check_options(args: argparse.Namespace) -> None:
    """Raise InputError for option values that would only fail after inference."""
    if not 0.0 <= args.threshold <= 100.0:
        raise InputError(f"--threshold {args.threshold:g} is out of range; give a top percentage in [0, 100].")
    if args.findings and Path(args.findings).suffix.lower() not in (".csv", ".json"):
        raise InputError(f"--findings '{args.findings}' must end in .csv or .json.")
    if args.preview and Path(args.preview).suffix.lower() != ".png":
        raise InputError(f"--preview '{args.preview}' must end in .png.")
    if args.batch_size < 0:
        raise InputError(f"--batch-size {args.batch_size} is invalid; give 0 (automatic) or a positive number.")
    for path in (args.output, args.findings, args.preview):
        if path:
            check_parent_folders(Path(path))


def check_parent_folders(path: Path) -> None:
    """Raise InputError when a parent of `path` exists but is a file, so the folder cannot be made."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"Cannot write '{path}': '{parent}' is a file, not a folder. Choose another path.")
            return


@contextlib.contextmanager
def output_errors_explained():
    """Turn a failed write (no permission, a file where a folder should be, a full disk) into an InputError."""
    try:
        yield
    except OSError as error:
        target = error.filename or "an output file"
        raise InputError(f"Cannot write '{target}': {error.strerror or error}. Choose an output folder you "
                         "can write to, with enough free space.") from error


def run_predict(args: argparse.Namespace, image=None, loaded=None) -> int:
    """Score args.input and write its outputs; a folder of image files or a CSV list runs as a batch.

    The batch runner passes each scan's `image`, read ahead, and the `loaded` model.
    """
    if image is None and is_batch_input(Path(args.input)):
        return run_batch(args, run_predict)
    reporter = JsonLinesReporter() if args.progress == "jsonl" else BarReporter()
    if args.progress == "none":
        reporter.progress = lambda stage, fraction: None

    # Check cheap things first, so a typo fails in a second rather than after inference.
    output = Path(args.output)
    if not has_suffix(output, OUTPUT_SUFFIXES):
        raise InputError(f"Output '{output}' has an unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    check_output_path(output, args.input)
    check_options(args)
    device = resolve_device(args.device)
    if image is None:
        image = read_ct(args.input, series_uid=args.series, frame=args.frame)
    if loaded is None:
        # Load on the CPU: the pipeline moves the model to the device, and back to the CPU if the device fails.
        loaded = load_model(args.model, device="cpu")
    result = compute_anomaly_map(image, loaded, device=str(device), batch_size=args.batch_size,
                                 progress=reporter.progress, name=str(args.input), allow_non_hu=args.allow_non_hu)
    outputs = {}
    with output_errors_explained():
        outputs["map"] = str(write_image(result.anomaly_map, output))

    threshold = score_threshold(args, result.calibration, result.floor)
    findings = find_findings(result.anomaly_map, threshold, result.calibration, min_volume_ml=args.min_volume_ml)
    with output_errors_explained():
        if args.findings:
            outputs["findings"] = str(write_findings(findings, args.findings))
        if args.preview:
            centre = findings[0].peak_lps if findings else None
            outputs["preview"] = str(write_preview(image, result.anomaly_map, threshold, args.preview, centre))

    # The model's name, floor and calibration let a caller (the Slicer module) re-threshold the map
    # as "top p % of normal tissue" without loading the model package itself.
    calibration = None
    if result.calibration is not None:
        calibration = {"levels": result.calibration.levels.tolist(), "scores": result.calibration.scores.tolist()}
    reporter.emit("done", outputs=outputs, threshold=threshold, findings=len(findings), device=result.device,
                  seconds=round(sum(result.timings_s.values()), 2), model=loaded.config.name,
                  floor=result.floor, calibration=calibration)
    if args.progress != "jsonl":
        print(f"Wrote {', '.join(outputs.values())}; {len(findings)} findings above score {threshold:.2f}",
              file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="compute the anomaly map of one CT",
                                   description="Compute the anomaly map of a CT file or DICOM folder.")
    parser.add_argument("input", help="CT file (.nii, .nii.gz, .nrrd, .mha), folder with one DICOM series, "
                                      "or many scans: a folder of CT files or a CSV list (column 'input', "
                                      "optional column 'output')")
    parser.add_argument("-o", "--output", required=True,
                        help="anomaly map file; .nii.gz, .nii, .nrrd or .mha sets the format. For many "
                             "scans: the output folder")
    parser.add_argument("--model", default=None,
                        help="registered model name (see `screener models`), package folder, or hub repo "
                             "OWNER/NAME@COMMIT (default: the bundled model); hub models are cached in "
                             "$SCREENER_CACHE_DIR, else <user cache>/screener/hub")
    parser.add_argument("--series", default=None, help="DICOM series instance UID, for folders with several series")
    parser.add_argument("--frame", type=int, default=None,
                        help="0-based frame to score in a 4D image or an image with several components per voxel")
    parser.add_argument("--preview", default=None, help="write a PNG with axial, coronal and sagittal slices "
                                                         "(for many scans: a folder for <scan>.png)")
    parser.add_argument("--findings", default=None, help="write findings as .csv or .json "
                                                          "(for many scans: a folder for <scan>.csv)")
    parser.add_argument("--map-suffix", default=DEFAULT_MAP_SUFFIX,
                        help=f"for many scans: suffix of each map file (default {DEFAULT_MAP_SUFFIX})")
    parser.add_argument("--overwrite", action="store_true",
                        help="for many scans: score scans whose outputs are complete again instead of "
                             "skipping them")
    parser.add_argument("--threshold", type=float, default=DEFAULT_TOP_PERCENT,
                        help="findings are regions in the top THRESHOLD %% of normal-tissue scores "
                             f"(from the model's calibration; default {DEFAULT_TOP_PERCENT})")
    parser.add_argument("--threshold-score", type=float, default=None,
                        help="raw score threshold in nats; overrides --threshold")
    parser.add_argument("--min-volume-ml", type=float, default=0.0, help="drop findings smaller than this, in ml")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="patches per network call; 0 (default) picks it from the free GPU memory, "
                             "or one patch per CPU thread")
    parser.add_argument("--progress", choices=["bar", "jsonl", "none"], default="bar",
                        help="progress as a bar on stderr, JSON lines on stdout, or none")
    parser.add_argument("--allow-non-hu", action="store_true",
                        help="run even when the values do not look like Hounsfield units")
    parser.set_defaults(handler=run_predict)
