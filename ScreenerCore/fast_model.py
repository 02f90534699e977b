"""An inference-only copy of ScreenerModel that gives the same scores with less work per patch.

Rewrites, each exact in real arithmetic, so only float rounding changes the scores:

- batch norm folded into the convolution before it (eval mode uses fixed statistics);
- for a masked-context condition with a conditional Gaussian density, the condition
  net's 1x1x1 head folded into the density's first 3x3x3 convolution, since nothing
  nonlinear lies between them. The head's bias becomes an extra input channel of ones,
  zero-padded like the features, so border voxels get exactly the bias they had;
- the density's last convolution split into one for the mean and one for the
  log-variance, so both come out dense in the descriptors' layout, and the Gaussian
  negative log-likelihood computed in place on them, without full-size temporaries;
- channels-last 3D memory layout (NDHWC), which oneDNN and cuDNN convolutions prefer;
- on the CPU, every 3D convolution through oneDNN (`OneDnnConv3d`).

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


class OneDnnConv3d(nn.Conv3d):
    """A Conv3d that runs through oneDNN on the CPU in float32, whatever the batch size.

    PyTorch (2.13 and earlier) sends a float32 CPU convolution with batch size 1 and
    fewer than 20480 values in the input's first four dimensions, or a 1x1x1 kernel on
    one thread, to its slower im2col kernel. Those are exactly the first layers and the
    coarsest level of these U-Nets when each CPU thread scores one patch. Other devices
    and dtypes use nn.Conv3d's own path.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.device.type == "cpu" and input.dtype == torch.float32 and self.padding_mode == "zeros"
                and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(input, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(input)


def use_onednn_convolutions(module: nn.Module) -> nn.Module:
    """Turn every plain nn.Conv3d inside `module` into a OneDnnConv3d with the same weights, in place."""
    for child in module.modules():
        if type(child) is nn.Conv3d and isinstance(child.padding, tuple):
            child.__class__ = OneDnnConv3d
    return module


def split_output_conv(conv: nn.Conv3d) -> tuple[nn.Conv3d, nn.Conv3d]:
    """Split a conv with 2C output channels into two convs with the first and the last C."""
    halves = []
    channels = conv.out_channels // 2
    for part in (slice(0, channels), slice(channels, 2 * channels)):
        half = nn.Conv3d(conv.in_channels, channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        with torch.no_grad():
            half.weight.copy_(conv.weight[part])
            if conv.bias is not None:
                half.bias.copy_(conv.bias[part])
        halves.append(half.to(conv.weight.device, conv.weight.dtype))
    return halves[0], halves[1]


def gaussian_nll_in_place(y: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """Return -log N(y; mean, exp(log_variance)) summed over channels, overwriting y and log_variance.

    Same formula as models.density.gaussian_nll, in an order that needs one (B, ...)
    output instead of several (B, C, ...) temporaries. The inputs should share one
    memory layout, so the elementwise steps run over dense memory.
    """
    log_variance.clamp_(MIN_LOG_VARIANCE, MAX_LOG_VARIANCE)
    nll = log_variance.sum(dim=1)
    precision = log_variance.neg_().exp_()
    squared = y.sub_(mean).square_().mul_(precision)
    nll.add_(squared.sum(dim=1)).add_(y.shape[1] * LOG_2PI).mul_(0.5)
    return nll


class FastScreenerModel(nn.Module):
    """Scores patches like ScreenerModel.forward, with the rewrites of this module's docstring."""

    def __init__(self, model: ScreenerModel, channels_last: bool = True, onednn: bool = True):
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
            self.folded_density = nn.Sequential(fold_head_into_conv(self.condition.head, layers[0]), *layers[1:-1])
            self.mean_conv, self.log_variance_conv = split_output_conv(layers[-1])
            self.condition.head = nn.Identity()
        if onednn:
            use_onednn_convolutions(self)
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
                hidden = self.folded_density(features)
                mean, log_variance = self.mean_conv(hidden), self.log_variance_conv(hidden)
                y = descriptors.float().contiguous(memory_format=mean_format(mean))
                return gaussian_nll_in_place(y, mean, log_variance)

        if self.condition is not None:
            condition = self.condition(self.layout(torch.cat([intensity, torch.ones_like(intensity)], dim=1)))
        else:
            condition = self.base.conditions(intensity, origin_mm)
        with torch.autocast(device_type=intensity.device.type, enabled=False):
            condition = None if condition is None else condition.float()
            return self.base.density(descriptors.float(), condition)


def mean_format(tensor: torch.Tensor) -> torch.memory_format:
    """Return channels_last_3d when `tensor` is stored that way, else the default layout."""
    if tensor.is_contiguous(memory_format=torch.channels_last_3d) and not tensor.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def count_flops(model: nn.Module, patch_size, device: torch.device | str = "cpu", divisor: int = 4) -> int:
    """Count the floating-point operations of `model` on one patch with torch.utils.flop_counter.

    A multiply-add counts as two operations, as FlopCounterMode does (PyTorch 2.1 and later).
    Only operators that FlopCounterMode knows are counted (convolutions, matrix products);
    elementwise work is left out, so this is a lower bound on the work. It does not know
    torch.mkldnn_convolution: count a FastScreenerModel built with onednn=False. To keep this
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
