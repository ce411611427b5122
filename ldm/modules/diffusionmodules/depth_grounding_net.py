"""Original class path ldm.modules.diffusionmodules.depth_grounding_net.PositionNet: depth map, ConvNeXt-T tokens."""
from .grounding_net import SpatialPositionNet


class PositionNet(SpatialPositionNet):
    map_key = "depth"
