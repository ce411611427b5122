"""Original class path: hed map downsampler input (batch key `hed_edge`)."""
from .base import spatial_adapters

_, GroundingDSInput = spatial_adapters("hed_edge")

__all__ = ["GroundingDSInput"]
