"""Original class path ldm.modules.diffusionmodules.normal_grounding_net.PositionNet: normal map, ConvNeXt-T tokens."""
from .grounding_net import SpatialPositionNet


class PositionNet(SpatialPositionNet):
    map_key = "normal"
