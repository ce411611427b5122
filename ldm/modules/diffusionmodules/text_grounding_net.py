"""Original class path ldm.modules.diffusionmodules.text_grounding_net.PositionNet."""
from .grounding_net import BoxTextPositionNet as PositionNet

__all__ = ["PositionNet"]
