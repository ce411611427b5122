"""Original class path: HED map -> 1 channel (channel 0), bicubically resized to the latent grid."""
from .grounding_net import SpatialDownsampler


class GroundingDownsampler(SpatialDownsampler):
    def __init__(self, out_dim: int = 1, out_size: int = 64):
        super().__init__(in_channels=1, out_dim=out_dim, resize_input=None, out_size=out_size)
