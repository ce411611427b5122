"""Original class path: depth map downsampler input (batch key `depth`)."""
from .base import spatial_adapters

_, GroundingDSInput = spatial_adapters("depth")

__all__ = ["GroundingDSInput"]
