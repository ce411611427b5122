"""Original class path: sem map tokenizer input (batch keys `sem`, `mask`)."""
from .base import spatial_adapters

GroundingNetInput, _ = spatial_adapters("sem")

__all__ = ["GroundingNetInput"]
