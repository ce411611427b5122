"""Original class path ldm.modules.diffusionmodules.keypoint_grounding_net.PositionNet."""
from .grounding_net import KeypointPositionNet as PositionNet

__all__ = ["PositionNet"]
