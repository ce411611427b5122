"""Building blocks of GLIGEN training (``trainer.train`` runs them top to bottom).

* :mod:`ldm.training.config` - :class:`TrainConfig`, every default, CLI + YAML;
* :mod:`ldm.training.launch` - Lightning Fabric: devices, precision, DDP, torchrun / SLURM;
* :mod:`ldm.training.data` - seeded, exactly resumable data stream (sampler, loader, batches);
* :mod:`ldm.training.build` - models and pretrained weights, optimizer, schedule, EMA, resume;
* :mod:`ldm.training.loss` - the objective, ``loss(models, batch) -> {"loss": ...}``;
* :mod:`ldm.training.preview` - preview sampling and the image / caption writer;
* :mod:`ldm.training.state` - seeding and RNG capture/restore, trainable-parameter selection, run
  folders, strict loads and resume checks.
"""
