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
    """Return the invariance, variance and covariance terms for embeddings (N, D).

    Invariance is the mean squared difference over all N * D entries. Variance is the
    mean over dimensions of relu(1 - std), averaged over the two branches. Covariance
    is the sum of squared off-diagonal covariances divided by D, summed over the two
    branches, as in the authors' reference code (facebookresearch/vicreg).
    """
    invariance = F.mse_loss(z1, z2)

    variance = 0.0
    covariance = 0.0
    for z in (z1, z2):
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + torch.mean(F.relu(1.0 - std)) / 2
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (z.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        covariance = covariance + off_diagonal.pow(2).sum() / z.shape[1]
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
    """Return the SimCLR (NT-Xent) loss of N positive pairs.

    Each of the 2N embeddings must pick its partner among the 2N - 1 others by cosine
    similarity over `temperature`. The negatives are all other positions of the batch,
    from the same image and from the other images, in both views.
    """
    if temperature <= 0:
        raise ValueError(f"InfoNCE temperature must be positive, got {temperature}.")
    count = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    # A position is never its own negative.
    logits = logits.masked_fill(torch.eye(2 * count, dtype=torch.bool, device=z.device), float("-inf"))
    partners = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    loss = F.cross_entropy(logits, partners)
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == partners).float().mean()
    return loss, {"infonce": float(loss.detach()), "accuracy": float(accuracy)}
