"""Train GLIGEN: ``python main.py --yaml_file configs/flickr_text.yaml --DATA_ROOT DATA --name flickr_text``.

Processes come from Lightning Fabric (see :mod:`ldm.training.launch`)::

    python main.py ... --devices 2                        # Fabric starts 2 processes here
    torchrun --nproc_per_node=8 main.py ...                # one process per GPU
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 main.py ...
    srun python main.py ...                                # SLURM: one task per GPU, any number of nodes

``--batch_size`` is per process, as in the original. Every default lives in
:class:`ldm.training.config.TrainConfig`; a top-level key of the YAML named like a flag sets it, an
explicit flag wins. Relaunching with the same ``--OUTPUT_ROOT/--name`` resumes exactly from the
newest ``checkpoint_latest.pth``. Inpainting: convert a generation checkpoint with
``convert_ckpt.py``, then add ``--inpaint_mode True --ckpt <converted>``.

Bad input (missing or malformed files, unknown classes, mismatching checkpoints) ends with
``error: <one line>`` and exit status 1; ``GLIGEN_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import sys

from ldm.training.config import TrainConfig, build_parser, merged_config, parse_args, str2bool, str_or_none  # noqa: F401


def main(argv=None) -> int:
    import torch.multiprocessing as mp

    try:  # DataLoader workers are spawned (datasets must be picklable), as in the original
        mp.set_start_method("spawn")
    except RuntimeError:
        pass
    from ldm.checkpoint import CheckpointError
    from ldm.cli import guard

    usage_errors = (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError, KeyError, ValueError,
                    ImportError, CheckpointError)
    with guard(usage_errors, status=1) as g:  # expected user errors: one line
        cfg = parse_args(argv)
        from trainer import train

        train(cfg)
    return g.status


if __name__ == "__main__":
    sys.exit(main())
