"""Original class path: normal map downsampler input (batch key `normal`)."""
from .base import spatial_adapters

_, GroundingDSInput = spatial_adapters("normal")

__all__ = ["GroundingDSInput"]
