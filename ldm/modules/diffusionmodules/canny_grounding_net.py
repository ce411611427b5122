"""Original class path ldm.modules.diffusionmodules.canny_grounding_net.PositionNet: canny map, ConvNeXt-T tokens."""
from .grounding_net import SpatialPositionNet


class PositionNet(SpatialPositionNet):
    map_key = "canny_edge"
