"""Self-supervised losses on paired embeddings z1[i] <-> z2[i] of the same anatomical point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class VicregWeights:
    """Weights of the VICReg terms; defaults 25 / 25 / 1 as in Bardes et al., ICLR 2022."""

    invariance: float = 25.0
    variance: float = 25.0
    covariance: float = 1.0


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """Return the invariance, variance and covariance terms for embeddings (N, D)."""
    invariance = F.mse_loss(z1, z2)

    variance = 0.0
    covariance = 0.0
    for z in (z1, z2):
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + torch.mean(F.relu(1.0 - std)) / 2
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (z.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        covariance = covariance + off_diagonal.pow(2).sum() / z.shape[1] / 2
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, weights: VicregWeights = VicregWeights()
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the weighted VICReg loss and its terms as floats for logging."""
    terms = vicreg_terms(z1, z2)
    loss = (weights.invariance * terms["invariance"] + weights.variance * terms["variance"]
            + weights.covariance * terms["covariance"])
    return loss, {name: float(value.detach()) for name, value in terms.items()}


def infonce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the symmetric InfoNCE loss: each z1[i] must pick z2[i] among all rows of z2, and back."""
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    logits = z1 @ z2.T / temperature
    targets = torch.arange(z1.shape[0], device=z1.device)
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    return loss, {"infonce": float(loss.detach())}
