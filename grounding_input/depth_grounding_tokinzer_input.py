"""Original class path: depth map tokenizer input (batch keys `depth`, `mask`)."""
from .base import spatial_adapters

GroundingNetInput, _ = spatial_adapters("depth")

__all__ = ["GroundingNetInput"]
