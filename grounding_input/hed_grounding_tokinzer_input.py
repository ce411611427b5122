"""Original class path: hed map tokenizer input (batch keys `hed_edge`, `mask`)."""
from .base import spatial_adapters

GroundingNetInput, _ = spatial_adapters("hed_edge")

__all__ = ["GroundingNetInput"]
