"""Original class path: keypoint grounding input."""
from .base import KeypointInput as GroundingNetInput

__all__ = ["GroundingNetInput"]
