"""Original class path: normal map tokenizer input (batch keys `normal`, `mask`)."""
from .base import spatial_adapters

GroundingNetInput, _ = spatial_adapters("normal")

__all__ = ["GroundingNetInput"]
