"""An inference-only copy of ScreenerModel that gives the same scores with less work per patch.

Rewrites, each exact in real arithmetic, so only float rounding changes the scores:

- batch norm folded into the convolution before it (eval mode uses fixed statistics);
- for a masked-context condition with a conditional Gaussian density, the condition
  net's 1x1x1 head folded into the density's first 3x3x3 convolution, since nothing
  nonlinear lies between them. The head's bias becomes an extra input channel of ones,
  zero-padded like the features, so border voxels get exactly the bias they had;
- the Gaussian negative log-likelihood computed in place, without full-size temporaries;
- channels-last 3D memory layout (NDHWC), which oneDNN and cuDNN convolutions prefer.

The original model is not modified. Other condition and density kinds keep their
modules and get the folding and layout only.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models.density import LOG_2PI, MAX_LOG_VARIANCE, MIN_LOG_VARIANCE, ConditionalGaussian
from .models.screener import ScreenerModel

logger = logging.getLogger(__name__)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm3d that directly follows a Conv3d in an nn.Sequential into that conv, in place.

    The batch norm is replaced by nn.Identity. `module` must be in eval mode, because
    only fixed running statistics can be folded.
    """
    if module.training:
        raise ValueError("Batch norm can be folded only in eval mode; call .eval() first.")
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for index in range(len(child) - 1):
            conv, norm = child[index], child[index + 1]
            if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d):
                child[index] = fuse_conv_bn_eval(conv, norm)
                child[index + 1] = nn.Identity()
    return module


def fold_head_into_conv(head: nn.Conv3d, conv: nn.Conv3d) -> nn.Conv3d:
    """Return one conv equal to conv(head(h)) on the input cat([h, ones]).

    `head` is a 1x1x1 conv with bias (weights A, bias a); `conv` a zero-padded conv
    (weights W, bias b). Then conv(head(h)) = (W A) * h + W * (a ones) + b, where the
    ones field is zero outside the patch like h, so an extra input channel of ones
    with weights W a reproduces the bias exactly at borders too.
    """
    if head.kernel_size != (1, 1, 1) or head.groups != 1 or conv.groups != 1:
        raise ValueError("Only an ungrouped 1x1x1 head followed by an ungrouped conv can be folded.")
    head_weight = head.weight.detach()[:, :, 0, 0, 0]  # (mid, in)
    head_bias = head.bias.detach() if head.bias is not None else torch.zeros(head_weight.shape[0])
    weight = conv.weight.detach()  # (out, mid, k, k, k)
    folded_weight = torch.einsum("omdhw,mi->oidhw", weight, head_weight)
    ones_weight = torch.einsum("omdhw,m->odhw", weight, head_bias).unsqueeze(1)

    folded = nn.Conv3d(head_weight.shape[1] + 1, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                       padding_mode=conv.padding_mode)
    with torch.no_grad():
        folded.weight.copy_(torch.cat([folded_weight, ones_weight], dim=1))
        if conv.bias is not None:
            folded.bias.copy_(conv.bias.detach())
    return folded.to(conv.weight.device, conv.weight.dtype)


def gaussian_nll_in_place(y: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Return -log N(y; mean, exp(log_variance)) summed over channels, overwriting y and parameters.

    `parameters` is (B, 2C, ...) with the mean first and the log-variance second, as the
    conditional Gaussian predicts them. Same formula as models.density.gaussian_nll, in
    an order that needs one (B, ...) output instead of several (B, C, ...) temporaries.
    """
    # Slices rather than chunk(): autograd rejects in-place changes to outputs of chunk() outside inference mode.
    channels = parameters.shape[1] // 2
    mean, log_variance = parameters[:, :channels], parameters[:, channels:]
    log_variance.clamp_(MIN_LOG_VARIANCE, MAX_LOG_VARIANCE)
    nll = log_variance.sum(dim=1)
    precision = log_variance.neg_().exp_()
    squared = y.sub_(mean).square_().mul_(precision)
    nll.add_(squared.sum(dim=1)).add_(y.shape[1] * LOG_2PI).mul_(0.5)
    return nll


class FastScreenerModel(nn.Module):
    """Scores patches like ScreenerModel.forward, with the rewrites of this module's docstring."""

    def __init__(self, model: ScreenerModel, channels_last: bool = True):
        super().__init__()
        if model.training:
            raise ValueError("FastScreenerModel needs a model in eval mode; call .eval() first.")
        source = copy.deepcopy(model)
        self.config = source.config
        self.channels_last = channels_last
        self.descriptor = fold_batch_norms(source.descriptor)
        self.condition = fold_batch_norms(source.condition) if source.condition is not None else None
        self.base = source  # keeps conditions() for sin-cos positions and the original density

        # The head can be folded when the density's first layer is a conv on the condition features.
        self.folded_density = None
        if self.condition is not None and isinstance(source.density, ConditionalGaussian):
            layers = list(source.density.predictor)
            self.folded_density = nn.Sequential(fold_head_into_conv(self.condition.head, layers[0]), *layers[1:])
            self.condition.head = nn.Identity()
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def layout(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else tensor

    def forward(self, intensity: torch.Tensor, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Return anomaly scores (B, D, H, W) for patches (B, 1, D, H, W); see ScreenerModel.forward."""
        intensity = self.layout(intensity)
        descriptors = self.descriptor(intensity)

        if self.folded_density is not None:
            ones = torch.ones_like(intensity)
            features = self.condition(self.layout(torch.cat([intensity, ones], dim=1)))
            # The density runs in float32 even under autocast, as in ScreenerModel.forward.
            with torch.autocast(device_type=intensity.device.type, enabled=False):
                features = self.layout(torch.cat([features.float(), ones.float()], dim=1))
                parameters = self.folded_density(features)
                return gaussian_nll_in_place(descriptors.float(), parameters)

        if self.condition is not None:
            condition = self.condition(self.layout(torch.cat([intensity, torch.ones_like(intensity)], dim=1)))
        else:
            condition = self.base.conditions(intensity, origin_mm)
        with torch.autocast(device_type=intensity.device.type, enabled=False):
            condition = None if condition is None else condition.float()
            return self.base.density(descriptors.float(), condition)


def count_flops(model: nn.Module, patch_size, device: torch.device | str = "cpu", divisor: int = 4) -> int:
    """Count the floating-point operations of `model` on one patch with torch.utils.flop_counter.

    A multiply-add counts as two operations, as FlopCounterMode does (PyTorch 2.1 and later).
    Only operators that FlopCounterMode knows are counted (convolutions, matrix products);
    elementwise work is left out, so this is a lower bound on the work. To keep this
    cheap, the model runs on a patch `divisor` times smaller per axis and the count is
    scaled by the voxel ratio. That is exact for these fully convolutional nets when
    every pooling level still divides the smaller patch.
    """
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415 - only benchmarks count

    small = [int(p) // divisor for p in patch_size]
    if any(s * divisor != int(p) for s, p in zip(small, patch_size)):
        raise ValueError(f"Patch size {tuple(patch_size)} is not divisible by {divisor}; pass divisor=1.")
    patch = torch.zeros((1, 1, *small), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(patch, torch.zeros((1, 3), device=device))
    return int(counter.get_total_flops()) * divisor ** 3
