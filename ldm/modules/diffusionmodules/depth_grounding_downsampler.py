"""Original class path: depth map (first 1 channel(s)) -> resize_input -> two stride-2 convs -> out_dim channels."""
from .grounding_net import SpatialDownsampler


class GroundingDownsampler(SpatialDownsampler):
    def __init__(self, resize_input: int = 256, out_dim: int = 8):
        super().__init__(in_channels=1, out_dim=out_dim, resize_input=resize_input, hidden=4)
