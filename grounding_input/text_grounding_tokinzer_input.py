"""Original class path: box + text grounding input."""
from .base import BoxTextInput as GroundingNetInput

__all__ = ["GroundingNetInput"]
