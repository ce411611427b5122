"""Original class path ``ldm.modules.diffusionmodules.sem_grounding_net.PositionNet``: one-hot semantic map."""
from .grounding_net import SpatialPositionNet


class PositionNet(SpatialPositionNet):
    map_key = "sem"

    def __init__(self, resize_input: int = 448, in_dim: int = 152, out_dim: int = 768, **kwargs):
        super().__init__(resize_input=resize_input, out_dim=out_dim, in_dim=in_dim, **kwargs)
