"""Batch -> grounding-network input adapters (see :mod:`grounding_input.base`).

The original per-modality class paths that released configs name
(``grounding_input.<family>_grounding_tokinzer_input.GroundingNetInput``, misspelling kept) resolve
through :mod:`ldm.registry`.
"""
