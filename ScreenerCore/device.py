"""Choosing the torch device for inference."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "gpu")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for `name`: "auto" picks CUDA when present, else the CPU.

    "gpu" is an alias of "cuda". Names such as "cuda:1" pass through. Asking for CUDA on
    a machine without it raises ValueError with the fix.
    """
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Device '{name}' requested but this PyTorch build sees no CUDA GPU. "
                         "Use --device cpu, or install a CUDA build of PyTorch.")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"Invalid device '{name}'; use auto, cpu, cuda, gpu or cuda:N.") from error
