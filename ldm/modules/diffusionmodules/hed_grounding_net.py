"""Original class path ldm.modules.diffusionmodules.hed_grounding_net.PositionNet: hed map, ConvNeXt-T tokens."""
from .grounding_net import SpatialPositionNet


class PositionNet(SpatialPositionNet):
    map_key = "hed_edge"
