"""Original class path: sem map downsampler input (batch key `sem`)."""
from .base import spatial_adapters

_, GroundingDSInput = spatial_adapters("sem")

__all__ = ["GroundingDSInput"]
