"""A small fully convolutional 3D U-Net that gives a feature vector for every voxel."""

from __future__ import annotations

import torch
from torch import nn

from ..config import NetConfig


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3x3 convolutions, each followed by batch norm and LeakyReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet3d(nn.Module):
    """U-Net with len(channels) - 1 poolings by 2; the output has the input's spatial size.

    Input edges must be multiples of 2 ** (len(channels) - 1). Batch norm uses running
    statistics in eval mode, so a voxel's feature does not depend on which patch holds it
    beyond the receptive field.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        channels = list(config.channels)
        self.encoders = nn.ModuleList()
        previous = config.in_channels
        for width in channels:
            self.encoders.append(conv_block(previous, width))
            previous = width

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(channels[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(previous, width, kernel_size=2, stride=2))
            self.decoders.append(conv_block(2 * width, width))
            previous = width
        self.head = nn.Conv3d(previous, config.out_channels, kernel_size=1)
        self.divisor = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = nn.functional.max_pool3d(x, 2)
            x = encoder(x)
            skips.append(x)

        skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = upsample(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def build_net(config: NetConfig) -> nn.Module:
    if config.arch != "unet3d":
        raise ValueError(f"Unknown net architecture '{config.arch}'; known: unet3d.")
    return UNet3d(config)
