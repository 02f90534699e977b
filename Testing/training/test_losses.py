"""VICReg and InfoNCE on hand-made embeddings against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from screener_training.losses import VicregWeights, infonce_loss, vicreg_loss, vicreg_terms


def test_vicreg_terms_hand_computed():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])

    terms = vicreg_terms(z1, z2)

    # Invariance: one squared difference of 4 among 4 entries.
    assert float(terms["invariance"]) == pytest.approx(1.0)
    # Variance: only z2's second dimension is constant, std sqrt(1e-4) = 0.01, so (1 - 0.01) / 2 dims / 2 branches.
    assert float(terms["variance"]) == pytest.approx(0.99 / 4, abs=1e-6)
    # Covariance: z1 has covariance 2 off the diagonal, twice, squared, over 2 dims: 4; z2 has none.
    assert float(terms["covariance"]) == pytest.approx(4.0, abs=1e-5)


def test_vicreg_loss_applies_weights():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])

    default, _ = vicreg_loss(z1, z2)
    custom, terms = vicreg_loss(z1, z2, VicregWeights(invariance=1.0, variance=0.0, covariance=2.0))

    assert float(default) == pytest.approx(25 * 1.0 + 25 * 0.99 / 4 + 4.0, abs=1e-4)
    assert float(custom) == pytest.approx(1.0 + 2 * 4.0, abs=1e-4)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_infonce_orthogonal_pairs():
    z = torch.eye(2)

    loss, terms = infonce_loss(z, z.clone(), temperature=1.0)
    sharp, _ = infonce_loss(z, z.clone(), temperature=0.5)

    # Each anchor: partner at cosine 1, two negatives at cosine 0.
    assert float(loss) == pytest.approx(math.log(2 + math.e) - 1)
    assert float(sharp) == pytest.approx(math.log(2 + math.e ** 2) - 2)
    assert terms["accuracy"] == 1.0


def test_infonce_counts_negatives_within_and_across_views():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    loss, _ = infonce_loss(z1, z2, temperature=1.0)

    # Rows a, b (view 1), c, d (view 2); a's negatives include b from its own view.
    # a -> c: log(2e + 1) - 1; b -> d: log(2e + 1); c -> a: log(2e + 1) - 1; d -> b: log 3.
    expected = (3 * math.log(2 * math.e + 1) - 2 + math.log(3)) / 4
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_infonce_is_scale_invariant():
    z1 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    z2 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    unit, _ = infonce_loss(z1, z2)
    scaled, _ = infonce_loss(3 * z1, 0.5 * z2)

    assert float(unit) == pytest.approx(float(scaled), abs=1e-5)


def test_infonce_rejects_zero_temperature():
    with pytest.raises(ValueError, match="temperature"):
        infonce_loss(torch.eye(2), torch.eye(2), temperature=0.0)
