"""Original class path: canny map downsampler input (batch key `canny_edge`)."""
from .base import spatial_adapters

_, GroundingDSInput = spatial_adapters("canny_edge")

__all__ = ["GroundingDSInput"]
