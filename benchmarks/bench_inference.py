"""Time every stage of the anomaly-map job on real CTs, beside MONAI's sliding_window_inference.

Usage:
    python benchmarks/bench_inference.py [--model NAME_OR_FOLDER] [--device cpu|cuda]
        [--volumes PATH ...] [--reference-volumes NAME ...] [--blends constant gaussian]
        [--threads N] [--batch-size 0] [--compile] [--json FILE]

Per volume it reports the seconds of each stage (read, preprocess, descriptor, condition,
density, blending, resample back, write), input voxels per second, peak host memory
(resident set, reset per job on Linux) and peak device memory. The descriptor, condition
and density seconds split the measured network time by each net's share of the
thread-seconds that forward hooks record. Blending is the rest of the inference stage.

The reference runs MONAI's sliding_window_inference with the model exactly as trained,
the same patch size, overlap and batch size, in the same process. Its map is compared
with ours inside the body. The compute bound counts FLOPs per patch with
torch.utils.flop_counter, times the patches run, over the device's peak rate.

Needs the `bench` extra (monai, psutil). Default volumes: every CT in ../shared/data/ct/train
and ../shared/data/ct/eval beside the checkout.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ScreenerCore.fast_model import FastScreenerModel, count_flops
from ScreenerCore.io import IMAGE_SUFFIXES, has_suffix, read_ct, write_image
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.preprocessing import hu_to_intensity, to_model_grid
from ScreenerCore.registry import load_model
from ScreenerCore.sliding_window import blend_profile, patch_grid, select_patches
from ScreenerCore.speed import SpeedOptions, auto_batch_size, build_patch_scorer, default_threads

logger = logging.getLogger("bench_inference")

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"
# Dense peak rates in TFLOP/s from NVIDIA's data sheets (SXM parts): (float16 tensor core, float32).
GPU_PEAK_TFLOPS = {"H200": (989.4, 66.9), "H100": (989.4, 66.9), "A100": (312.0, 19.5), "L40S": (362.1, 91.6),
                   "A10": (125.0, 31.2), "T4": (65.0, 8.1)}
# float32 operations per cycle and core with two 256-bit FMA units (AVX2: 2 x 8 lanes x 2 operations).
CPU_FLOPS_PER_CYCLE = 32


# ---------------------------------------------------------------- measuring


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size of this process (Linux 4.0 and later); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Return the peak resident set size since the last reset (VmHWM), or ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # noqa: PLC0415 - POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def device_peak(device: torch.device):
    """Record the peak CUDA memory allocated inside the block in result["bytes"]; 0 on the CPU."""
    result = {"bytes": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield result
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device)


@dataclass
class NetTimer:
    """Thread-seconds spent in each net, from global forward hooks, plus the wall time of whole-model calls."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=lambda: {"descriptor": 0.0, "condition": 0.0, "model": 0.0})
    intervals: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    def before(self, module: nn.Module, inputs) -> None:
        role = getattr(module, "_bench_role", None)
        if role is not None:
            synchronize(self.device)
            setattr(self.local, role, time.perf_counter())

    def after(self, module: nn.Module, inputs, output) -> None:
        role = getattr(module, "_bench_role", None)
        if role is None:
            return
        synchronize(self.device)
        ended = time.perf_counter()
        started = getattr(self.local, role)
        with self.lock:
            self.seconds[role] += ended - started
            if role == "model":
                self.intervals.append((started, ended))

    def network_wall_seconds(self) -> float:
        """Return the wall time during which at least one whole-model call ran (overlapping calls merged)."""
        total, current_end = 0.0, float("-inf")
        for started, ended in sorted(self.intervals):
            if started > current_end:
                total += ended - started
                current_end = ended
            elif ended > current_end:
                total += ended - current_end
                current_end = ended
        return total

    def split(self) -> dict[str, float]:
        """Split the network wall time into descriptor, condition and density (the rest of each call)."""
        model = self.seconds["model"]
        if model <= 0:
            return {"descriptor": 0.0, "condition": 0.0, "density": 0.0}
        wall = self.network_wall_seconds()
        descriptor = wall * self.seconds["descriptor"] / model
        condition = wall * self.seconds["condition"] / model
        return {"descriptor": descriptor, "condition": condition, "density": wall - descriptor - condition}


def tag_nets(model: nn.Module) -> None:
    """Mark the whole model and its descriptor and condition nets for NetTimer."""
    model._bench_role = "model"
    model.descriptor._bench_role = "descriptor"
    if getattr(model, "condition", None) is not None:
        model.condition._bench_role = "condition"


@contextmanager
def timed_nets(device: torch.device):
    """Install global forward hooks that time every module tagged by tag_nets."""
    timer = NetTimer(device)
    original_init = FastScreenerModel.__init__

    def tagging_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        tag_nets(self)

    FastScreenerModel.__init__ = tagging_init
    pre = nn.modules.module.register_module_forward_pre_hook(timer.before)
    post = nn.modules.module.register_module_forward_hook(timer.after)
    try:
        yield timer
    finally:
        pre.remove()
        post.remove()
        FastScreenerModel.__init__ = original_init


# ---------------------------------------------------------------- the two paths


def run_job(path: Path, loaded, device: torch.device, batch_size: int, options: SpeedOptions,
            out_dir: Path) -> dict:
    """Run read, compute_anomaly_map and write on one CT, with stage times and peaks."""
    reset_peak_rss()
    load_before = os.getloadavg()[0]
    stages = {}
    started = time.perf_counter()
    image = read_ct(path)
    stages["read"] = time.perf_counter() - started

    # Process CPU seconds (all threads) of the inference stage, from the progress marks: it
    # starts when preprocessing reports 1.0 and ends when inference reports 1.0. On a
    # machine shared with other jobs they vary less than wall-clock seconds.
    marks = {}

    def mark(stage: str, fraction: float) -> None:
        if fraction >= 1.0:
            marks[stage] = time.process_time()

    job_cpu_started = time.process_time()
    with timed_nets(device) as timer, device_peak(device) as peak:
        result = compute_anomaly_map(image, loaded, device=str(device), batch_size=batch_size, speed=options,
                                     progress=mark, name=path.name)
    stages["preprocess"] = result.timings_s["preprocess"]
    nets = timer.split()
    stages.update(nets)
    stages["blending"] = result.timings_s["inference"] - sum(nets.values())
    stages["resample"] = result.timings_s["resample"]

    started = time.perf_counter()
    write_image(result.anomaly_map, out_dir / f"{path.name.split('.')[0]}_map.nii.gz")
    stages["write"] = time.perf_counter() - started

    total = sum(stages.values())
    voxels = int(np.prod(image.GetSize()))
    return {"stages_s": stages, "total_s": total, "inference_s": result.timings_s["inference"],
            "inference_cpu_s": marks["inference"] - marks["preprocess"],
            "job_cpu_s": time.process_time() - job_cpu_started,
            "input_voxels": voxels, "voxels_per_s": voxels / total, "model_grid": list(result.model_grid_map.shape),
            "peak_host_bytes": peak_rss_bytes(), "peak_device_bytes": peak["bytes"], "device": result.device,
            "load_average": [load_before, os.getloadavg()[0]], "result": result}


def run_monai_reference(result, loaded, device: torch.device, batch_size: int, blend: str) -> dict:
    """Run MONAI's sliding_window_inference with the model as trained on our model-grid volume.

    Gaussian blending passes our per-patch weights as roi_weight_map: MONAI's own map
    clamps small weights to 1e-3 of the peak, ours does not, and the maps are compared.
    """
    from monai.inferers import sliding_window_inference  # noqa: PLC0415 - the bench extra

    config = loaded.config.preprocessing
    grid = result.model_grid
    model = copy.deepcopy(loaded.model).eval().to(device)
    origin = torch.tensor(grid.reference.GetOrigin(), dtype=torch.float32, device=device)
    spacing = torch.tensor(grid.reference.GetSpacing(), dtype=torch.float32, device=device)
    pads = [max(0, p - s) // 2 for s, p in zip(grid.intensity.shape, config.patch_size)]

    def predictor(patches: torch.Tensor, slices) -> torch.Tensor:
        # MONAI pads small axes on both sides; undo its offset to get model-grid start indices.
        starts = torch.tensor([[s[axis + 2].start - pads[axis] for axis in range(3)] for s in slices],
                              dtype=torch.float32, device=device)
        return model(patches, origin + starts.flip(-1) * spacing).unsqueeze(1)

    air = float(hu_to_intensity(np.array([-1024.0]), config)[0])
    volume = torch.from_numpy(grid.intensity)[None, None].to(device)
    weights = None
    if blend == "gaussian":
        profiles = [blend_profile(p, blend, 0.125) for p in config.patch_size]
        weights = torch.from_numpy(np.einsum("i,j,k->ijk", *profiles).astype(np.float32)).to(device)
    load_before = os.getloadavg()[0]
    reset_peak_rss()
    with device_peak(device) as peak, torch.inference_mode():
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        scores = sliding_window_inference(volume, config.patch_size, batch_size, predictor, overlap=config.overlap,
                                          mode=blend, cval=air, roi_weight_map=weights, with_coord=True)
        synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    scores = scores[0, 0].float().cpu().numpy()

    # Our map is floored (scores below the floor raised to it) and, when the model's config
    # sets score smoothing, smoothed and floored again. The reference gets the same steps.
    body = grid.body_mask
    floored = np.where(body, np.maximum(scores, result.floor), result.floor)
    smoothing_mm = getattr(config, "score_smoothing_mm", 0.0)
    if smoothing_mm > 0:
        from ScreenerCore.postprocessing import smooth_scores  # noqa: PLC0415 - only models that smooth

        floored = smooth_scores(floored, grid.reference.GetSpacing()[::-1], smoothing_mm)
        floored = np.where(body, np.maximum(floored, result.floor), result.floor)
    difference = np.abs(floored[body] - result.model_grid_map[body]) if body.any() else np.zeros(1)
    return {"inference_cpu_s": cpu_seconds, "above_floor_fraction": float((scores[body] > result.floor).mean()) if body.any() else 0.0,
            "inference_s": seconds, "peak_host_bytes": peak_rss_bytes(), "peak_device_bytes": peak["bytes"],
            "max_abs_difference": float(difference.max()),
            "p999_abs_difference": float(np.quantile(difference, 0.999)),
            "padded": any(pads), "load_average": [load_before, os.getloadavg()[0]]}


# ---------------------------------------------------------------- compute bound


def patches_run(result, loaded, skip_outside_body: bool) -> int:
    config = loaded.config.preprocessing
    shape = [max(s, p) for s, p in zip(result.model_grid_map.shape, config.patch_size)]
    grid = patch_grid(shape, config.patch_size, config.overlap)
    region = None
    if skip_outside_body and result.model_grid.body_mask.any():
        region = np.zeros(shape, dtype=bool)
        mask = result.model_grid.body_mask
        region[:mask.shape[0], :mask.shape[1], :mask.shape[2]] = mask
    return len(select_patches(grid, config.patch_size, region))


def flops_per_patch(loaded) -> dict[str, int]:
    """Count FLOPs of one patch for the plain and the fast model."""
    patch = loaded.config.preprocessing.patch_size
    plain = copy.deepcopy(loaded.model).eval()
    # FlopCounterMode does not count oneDNN's own convolution operator; the FLOPs are the same.
    fast = FastScreenerModel(plain, onednn=False)
    # Counted on a patch 4 times smaller per axis and scaled; see count_flops.
    divisor = 4 if all(int(p) % 16 == 0 for p in patch) else 1
    return {"plain": count_flops(plain, patch, divisor=divisor), "fast": count_flops(fast, patch, divisor=divisor)}


def peak_tflops(device: torch.device, precision_fp16: bool, override: float | None) -> tuple[float, str]:
    """Return the device's peak rate in TFLOP/s and where the number comes from."""
    if override is not None:
        return override, "given with --peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (fp16, fp32) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return (fp16, f"{name} float16 tensor-core data sheet") if precision_fp16 else \
                    (fp32, f"{name} float32 data sheet")
        return float("nan"), f"unknown GPU {name}; pass --peak-tflops"
    cores = default_threads()
    megahertz = cpu_megahertz()
    rate = cores * megahertz * 1e6 * CPU_FLOPS_PER_CYCLE / 1e12
    return rate, f"estimate: {cores} cores x {megahertz:.0f} MHz x {CPU_FLOPS_PER_CYCLE} float32 FLOP/cycle (AVX2 FMA)"


def cpu_megahertz() -> float:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except OSError:
        pass
    return float("nan")


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- report


def default_volumes() -> list[Path]:
    found = []
    for folder in ("train", "eval"):
        found += sorted(path for path in (SHARED_CT / folder).glob("*")
                        if has_suffix(path, IMAGE_SUFFIXES) and "_label" not in path.name)
    return found


def gib(value: float) -> str:
    return f"{value / 2 ** 30:.2f}"


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [f"Machine: {machine['machine']}; torch {machine['torch']}; device {machine['device']}; "
             f"threads {machine['threads']}; {machine['date']}", "",
             "| volume | input voxels | read | preprocess | descriptor | condition | density | blending | resample "
             "| write | total s | job CPU s | Mvoxel/s | host peak GiB | device peak GiB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        stages = row["stages_s"]
        lines.append(
            f"| {row['volume']} | {row['input_voxels'] / 1e6:.1f} M | "
            + " | ".join(f"{stages[key]:.2f}" for key in ("read", "preprocess", "descriptor", "condition", "density",
                                                         "blending", "resample", "write"))
            + f" | {row['total_s']:.1f} | {row['job_cpu_s']:.1f} | {row['voxels_per_s'] / 1e6:.2f} | {gib(row['peak_host_bytes'])} | "
              f"{gib(row['peak_device_bytes'])} | {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f} |")

    references = [(row["volume"], blend, ref) for row in rows for blend, ref in row.get("reference", {}).items()]
    if references:
        lines += ["", "| volume | blending | ours inference s (CPU s) | MONAI inference s (CPU s) | speed-up wall (CPU) "
                      "| max abs diff (nats) | body voxels above floor | host peak GiB (MONAI) | load |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for volume, blend, ref in references:
            ours = next(row for row in rows if row["volume"] == volume)["inference_by_blend"][blend]
            note = " (MONAI pads both sides)" if ref["padded"] else ""
            lines.append(f"| {volume} | {blend} | {ours['wall']:.1f} ({ours['cpu']:.1f}) | "
                         f"{ref['inference_s']:.1f} ({ref['inference_cpu_s']:.1f}) | "
                         f"{ref['inference_s'] / ours['wall']:.2f}x ({ref['inference_cpu_s'] / ours['cpu']:.2f}x) | "
                         f"{ref['max_abs_difference']:.2e}{note} | "
                         f"{ref['above_floor_fraction']:.1%} | "
                         f"{gib(ref['peak_host_bytes'])} | {ref['load_average'][0]:.1f}-{ref['load_average'][1]:.1f} |")

    lines += ["", "| volume | patches | GFLOP per patch (fast / plain) | achieved TFLOP/s | fraction of peak |",
              "|---|---|---|---|---|"]
    for row in rows:
        bound = row["compute_bound"]
        lines.append(f"| {row['volume']} | {bound['patches']} | {bound['gflop_fast']:.1f} / {bound['gflop_plain']:.1f} "
                     f"| {bound['achieved_tflops']:.3f} | {bound['fraction_of_peak']:.1%} |")
    lines.append(f"\nPeak rate: {machine['peak_tflops']:.2f} TFLOP/s ({machine['peak_source']}).")
    return "\n".join(lines)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or package folder (default: the bundled model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--volumes", nargs="*", type=Path, default=None,
                        help="CT files (default: every CT in ../shared/data/ct/train and eval)")
    parser.add_argument("--reference-volumes", nargs="*", default=None,
                        help="file names (or name prefixes) to run the MONAI reference on (default: all)")
    parser.add_argument("--blends", nargs="+", default=["constant", "gaussian"], choices=["constant", "gaussian"],
                        help="blend modes compared with MONAI; the first also gives the stage table")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: usable CPUs)")
    parser.add_argument("--batch-size", type=int, default=0, help="patches per batch; 0 = automatic (default)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16 (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast model")
    parser.add_argument("--cpu-workers", type=int, default=0,
                        help="CPU patches scored at once, one thread each; 0 = one per thread (default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak in TFLOP/s for the bound")
    parser.add_argument("--warmup", action="store_true",
                        help="run the first volume once untimed first (CUDA context, cuDNN kernel choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads or default_threads())
    device = torch.device(args.device)
    loaded = load_model(args.model, device="cpu")
    volumes = args.volumes or default_volumes()
    if not volumes:
        print(f"No CT volumes found under {SHARED_CT}; pass --volumes.", file=sys.stderr)
        return 2

    flops = flops_per_patch(loaded)
    fp16 = device.type == "cuda" and args.precision in ("auto", "fp16", "bf16")
    peak, peak_source = peak_tflops(device, fp16, args.peak_tflops)
    machine = {"machine": f"{cpu_model_name()}, {default_threads()} CPUs, {platform.platform()}",
               "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(
                   timespec="minutes"), "peak_tflops": peak, "peak_source": peak_source, "model": loaded.config.name,
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}

    rows = []
    with tempfile.TemporaryDirectory(prefix="screener-bench-") as out:
        if args.warmup:
            options = SpeedOptions(precision=args.precision, compile=args.compile, blend=args.blends[0],
                                   cpu_workers=args.cpu_workers)
            run_job(Path(volumes[0]), loaded, device, args.batch_size, options, Path(out))
        for path in volumes:
            rows.append(bench_volume(Path(path), loaded, device, args, flops, peak, Path(out)))
            print(json.dumps({key: value for key, value in rows[-1].items() if key != "result"}), file=sys.stderr)

    for row in rows:
        row.pop("result", None)
    print(markdown(rows, machine))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "flops_per_patch": flops, "volumes": rows}, indent=2))
    return 0


def reference_batch_size(loaded, device: torch.device, cpu_workers: int) -> int:
    """Return the batch the fast path picks automatically, so MONAI gets the same number of patches per call."""
    options = SpeedOptions(cpu_workers=cpu_workers)
    scorer = build_patch_scorer(copy.deepcopy(loaded.model), device, options)
    return auto_batch_size(scorer, loaded.config.preprocessing.patch_size, device, options)


def bench_volume(path: Path, loaded, device: torch.device, args, flops: dict, peak: float, out: Path) -> dict:
    """Run the fast job for each blend mode, and the MONAI reference where asked, on one CT."""
    row, inference_by_blend, reference = None, {}, {}
    run_reference = args.reference_volumes is None or any(path.name.startswith(name)
                                                          for name in args.reference_volumes)
    batch = args.batch_size or reference_batch_size(loaded, device, args.cpu_workers)
    for blend in args.blends:
        options = SpeedOptions(precision=args.precision, compile=args.compile, blend=blend,
                               cpu_workers=args.cpu_workers)
        job = run_job(path, loaded, device, args.batch_size, options, out)
        inference_by_blend[blend] = {"wall": job["inference_s"], "cpu": job["inference_cpu_s"]}
        if row is None:
            row = job
        if run_reference:
            reference[blend] = run_monai_reference(job["result"], loaded, device, batch, blend)

    patches = patches_run(row["result"], loaded, skip_outside_body=True)
    achieved = flops["fast"] * patches / row["inference_s"] / 1e12
    row.update({"volume": path.name, "inference_by_blend": inference_by_blend, "reference": reference,
                "compute_bound": {"patches": patches, "gflop_fast": flops["fast"] / 1e9,
                                  "gflop_plain": flops["plain"] / 1e9, "achieved_tflops": achieved,
                                  "fraction_of_peak": achieved / peak if peak == peak else float("nan")}})
    return row


if __name__ == "__main__":
    sys.exit(main())
