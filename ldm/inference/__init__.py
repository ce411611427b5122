"""Inference front-end of GLIGEN: layouts, per-modality batches, checkpoint resolution, saving.

* :mod:`.layout` -- :class:`Generation` requests from JSON / YAML layouts, validation;
* :mod:`.modes` -- what a checkpoint can do (:class:`Mode`), from its architecture;
* :mod:`.batch` -- per-modality batch preparation;
* :mod:`.checkpoints` -- local files / Hub repo ids / released checkpoints;
* :mod:`.pipeline` -- :class:`Settings`, :class:`Runner` (sample, decode, save);
* :mod:`.visualize`, :mod:`.saving` -- annotated copies and output files;
* :mod:`.examples`, :mod:`.standins`, :mod:`.demo` -- the original example set and the offline demo.
"""
from .errors import LayoutError, ResolveError
from .layout import Generation, load_layout
from .modes import Mode, detect_mode

__all__ = ["LayoutError", "ResolveError", "Generation", "load_layout", "Mode", "detect_mode"]
