"""Original class path: canny map tokenizer input (batch keys `canny_edge`, `mask`)."""
from .base import spatial_adapters

GroundingNetInput, _ = spatial_adapters("canny_edge")

__all__ = ["GroundingNetInput"]
