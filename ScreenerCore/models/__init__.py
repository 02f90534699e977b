"""Networks and density models of Screener."""

from .density import ConditionalGaussian, MarginalGaussian, build_density, gaussian_nll
from .screener import ScreenerModel
from .unet import UNet3d, build_net

__all__ = ["ConditionalGaussian", "MarginalGaussian", "ScreenerModel", "UNet3d", "build_density", "build_net",
           "gaussian_nll"]
