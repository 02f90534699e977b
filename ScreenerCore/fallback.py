"""Falling back when a GPU cannot run the model: a smaller batch after out-of-memory, else the CPU.

A GPU can be reported available by PyTorch and still fail: a driver or build without
kernels for the card, cuDNN or MPS without 3D convolutions, or too little free memory.
The user should get a map either way, and one log line says what happened.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

CPU = torch.device("cpu")
Result = TypeVar("Result")

# Raised when a device cannot run a model: RuntimeError for CUDA, cuDNN and driver errors and
# out-of-memory; NotImplementedError for MPS operators without a kernel; AssertionError for
# a PyTorch build without CUDA support asked for a CUDA tensor.
DEVICE_ERRORS = (RuntimeError, NotImplementedError, AssertionError)


def is_out_of_memory(error: BaseException) -> bool:
    """Return True for an out-of-memory error of any device (CUDA raises its own type, MPS a RuntimeError)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def check_device_runs_model(model: nn.Module, device: torch.device, patch_size: Sequence[int]) -> torch.device:
    """Move `model` to `device` and score one empty patch there; return the CPU when that fails.

    The model ends up on the returned device. On the CPU nothing is tried, because the
    CPU is where every failure falls back to.
    """
    if device.type == "cpu":
        model.to(device)
        return device
    try:
        model.to(device)
        with torch.inference_mode():
            patch = torch.zeros((1, 1, *patch_size), device=device)
            model(patch, torch.zeros((1, 3), device=device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return device
    except DEVICE_ERRORS as error:
        logger.warning("Device %s failed to run the model's 3D convolutions (%s: %s); running on the CPU instead.",
                       device, error.__class__.__name__, first_line(error))
        release_device_memory(device)
        model.to(CPU)
        return CPU


def release_device_memory(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_with_fallback(run: Callable[[torch.device, int], Result], device: torch.device,
                      batch_size: int) -> tuple[Result, torch.device, int]:
    """Call run(device, batch_size), halving the batch after out-of-memory errors, then moving to the CPU.

    Returns the result with the device and batch size that produced it. Each retry is
    logged once. Errors other than out-of-memory, and out-of-memory on the CPU with a
    batch of one patch, are raised.
    """
    while True:
        try:
            return run(device, batch_size), device, batch_size
        except DEVICE_ERRORS as error:
            if not is_out_of_memory(error):
                raise
            release_device_memory(device)
            if batch_size > 1:
                smaller = batch_size // 2
                logger.warning("Out of memory on %s with %d patches per batch; retrying with %d.",
                               device, batch_size, smaller)
                batch_size = smaller
            elif device.type != "cpu":
                logger.warning("Out of memory on %s with 1 patch per batch; retrying on the CPU.", device)
                device = CPU
            else:
                raise
