"""Original class path: box + text + image grounding input."""
from .base import BoxTextImageInput as GroundingNetInput

__all__ = ["GroundingNetInput"]
