"""Original class path: one-hot semantic map -> nearest resize -> two stride-2 convs -> out_dim channels."""
from .grounding_net import SpatialDownsampler


class GroundingDownsampler(SpatialDownsampler):
    def __init__(self, resize_input: int = 256, in_dim: int = 152, out_dim: int = 8):
        super().__init__(in_channels=in_dim, out_dim=out_dim, resize_input=resize_input, hidden=16,
                         interpolation="nearest")
