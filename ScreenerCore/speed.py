"""Settings of the fast inference path: precision, layout, batch size, CPU threads, torch.compile.

compute_anomaly_map uses these through `build_patch_scorer`. With `SpeedOptions(fast=False)`
it runs the model exactly as trained (the plain path that tests compare against).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .fast_model import FastScreenerModel

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Share of the free CUDA memory that one batch's activations may take when the batch size is automatic.
CUDA_BATCH_MEMORY_SHARE = 0.6
# Upper bound of the automatic CUDA batch size, in patches. Larger batches delay progress
# reports and cancellation. NOTE: not yet measured on a GPU; the speed gain may stop earlier.
MAX_AUTO_BATCH = 32

# Host memory per patch voxel while one patch is scored: 1047 bytes for the plain path and
# 607 for the fast path with 16/32/64-channel U-Nets and 32 features, measured as the
# peak resident set growth (VmHWM) for one 96^3 patch. NOTE: wider nets need more.
HOST_BYTES_PER_PATCH_VOXEL = 1100
# Share of the available host memory that the automatic CPU batch may take.
HOST_BATCH_MEMORY_SHARE = 0.5

# scorer(patches (B, 1, D, H, W), origin_mm (B, 3)) -> scores (B, D, H, W)
PatchScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SpeedOptions:
    """Settings of how the networks run; each keeps the map within the tolerance that Testing/core/test_speed_paths.py checks."""

    # False runs the model as trained: no folding, no layout change, float32.
    fast: bool = True
    # "auto" (float16 autocast on CUDA, float32 elsewhere), "fp32", "fp16" or "bf16". The
    # density always runs in float32.
    precision: str = "auto"
    # Channels-last 3D (NDHWC) weights and activations.
    channels_last: bool = True
    # Compile the model with torch.compile; pays off only for many patches or many scans,
    # because compiling takes tens of seconds.
    compile: bool = False
    # CPU threads for PyTorch; None keeps PyTorch's choice (the physical cores).
    threads: int | None = None
    # CPU only: patches scored at once, each on its own thread with one PyTorch thread,
    # so threads never wait for each other inside a layer. 0 picks the number of PyTorch
    # threads; 1 turns this off. NOTE: not yet compared on an idle machine with all
    # threads working on one patch.
    cpu_workers: int = 0
    # Skip patches that contain no body voxel; their voxels all get the floor score anyway.
    skip_outside_body: bool = True
    # Blending of overlapping patches: "constant" (plain mean) or "gaussian".
    blend: str = "constant"
    # CUDA only: let cuDNN time its convolution algorithms once per shape and keep the
    # fastest (torch.backends.cudnn.benchmark, a process-wide setting).
    cudnn_benchmark: bool = True


def autocast_dtype(device: torch.device, options: SpeedOptions) -> torch.dtype | None:
    """Return the autocast dtype for `device`, or None for float32."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"Unknown precision '{options.precision}'; expected one of {PRECISIONS}.")
    if not options.fast or options.precision == "fp32":
        return None
    if options.precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return AUTOCAST_DTYPES[options.precision]


def configure_threads(options: SpeedOptions) -> int:
    """Set PyTorch's CPU thread count when `options.threads` is given; return the count in use."""
    if options.threads is not None:
        if options.threads < 1:
            raise ValueError(f"Thread count must be at least 1, got {options.threads}.")
        torch.set_num_threads(options.threads)
    return torch.get_num_threads()


def cpu_worker_count(options: SpeedOptions) -> int:
    """Return how many patches the CPU scores at once (one thread each)."""
    if options.cpu_workers < 0:
        raise ValueError(f"CPU workers must be 0 (automatic) or more, got {options.cpu_workers}.")
    return options.cpu_workers or torch.get_num_threads()


def prepare_model(model: nn.Module, device: torch.device, options: SpeedOptions) -> nn.Module:
    """Return the module that scores patches on `device`: the model itself, or its fast copy."""
    model = model.eval().to(device)
    if not options.fast:
        return model
    fast = FastScreenerModel(model, channels_last=options.channels_last).to(device).eval()
    if options.compile:
        # dynamic=False: the patch size is fixed, so one graph serves every batch of that size.
        fast = torch.compile(fast, dynamic=False)
    return fast


def parallel_on_cpu(scorer: PatchScorer, workers: int) -> PatchScorer:
    """Wrap `scorer` so a CPU batch is split across `workers` threads, each using one PyTorch thread.

    PyTorch operators release the GIL, so the threads run at the same time. The
    process-wide thread count is set to 1 while a batch runs and restored afterwards.
    """
    if workers <= 1:
        return scorer
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="screener-patch")

    def score_in_parallel(patches: torch.Tensor, origin_mm: torch.Tensor) -> torch.Tensor:
        if patches.shape[0] == 1:
            return scorer(patches, origin_mm)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            chunks = zip(patches.chunk(workers), origin_mm.chunk(workers))

            def score_chunk(chunk):
                with torch.inference_mode():
                    return scorer(*chunk)

            return torch.cat(list(pool.map(score_chunk, chunks)))
        finally:
            torch.set_num_threads(previous)

    return score_in_parallel


def build_patch_scorer(model: nn.Module, device: torch.device, options: SpeedOptions) -> PatchScorer:
    """Return scorer(patches, origin_mm) for `device` with the options' precision, layout and threads."""
    module = prepare_model(model, device, options)
    dtype = autocast_dtype(device, options)
    if device.type == "cuda" and options.fast and options.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    def score(patches: torch.Tensor, origin_mm: torch.Tensor) -> torch.Tensor:
        context = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
        with context:
            return module(patches, origin_mm)

    if device.type == "cpu" and options.fast:
        return parallel_on_cpu(score, cpu_worker_count(options))
    return score


def auto_batch_size(scorer: PatchScorer, patch_size: Sequence[int], device: torch.device,
                    options: SpeedOptions) -> int:
    """Pick patches per batch: from the free memory on CUDA, one per worker thread on the CPU.

    On CUDA one patch is scored to measure its peak memory; the batch then takes at most
    CUDA_BATCH_MEMORY_SHARE of the free memory, capped at MAX_AUTO_BATCH. On the CPU the
    batch is one patch per worker thread, fewer when HOST_BYTES_PER_PATCH_VOXEL per patch
    would take more than HOST_BATCH_MEMORY_SHARE of the available memory.
    """
    if device.type != "cuda":
        workers = cpu_worker_count(options) if options.fast else 1
        available = available_host_bytes()
        if available is None:
            return workers
        per_patch = HOST_BYTES_PER_PATCH_VOXEL * math.prod(int(p) for p in patch_size)
        return int(max(1, min(workers, HOST_BATCH_MEMORY_SHARE * available // per_patch)))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        scorer(torch.zeros((1, 1, *patch_size), device=device), torch.zeros((1, 3), device=device))
    per_patch = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free, _ = torch.cuda.mem_get_info(device)
    batch = int(max(1, min(MAX_AUTO_BATCH, CUDA_BATCH_MEMORY_SHARE * free // per_patch)))
    logger.info("Batch of %d patches on %s: %.2f GB per patch, %.2f GB free", batch, device, per_patch / 1e9,
                free / 1e9)
    return batch


def available_host_bytes() -> int | None:
    """Return MemAvailable from /proc/meminfo in bytes, or None where it cannot be read (not Linux)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_threads() -> int:
    """Return the CPUs this process may use (its affinity mask), for thread settings in scripts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1
