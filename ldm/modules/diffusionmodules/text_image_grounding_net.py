"""Original class path ldm.modules.diffusionmodules.text_image_grounding_net.PositionNet."""
from .grounding_net import BoxTextImagePositionNet as PositionNet

__all__ = ["PositionNet"]
