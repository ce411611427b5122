"""Batch -> grounding-network input adapters (see :mod:`grounding_input.base`).

The ``*_grounding_tokinzer_input`` / ``*_grounding_downsampler_input`` modules keep the original
(misspelled) class paths that released checkpoints name in their configs.
"""
