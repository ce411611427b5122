"""Building blocks of the GLIGEN training loop (``trainer.py`` holds the :class:`Trainer`).

* :mod:`ldm.training.data` - seeded, exactly resumable data stream (sampler, loader, batches);
* :mod:`ldm.training.state` - devices, seeding and RNG capture/restore, trainable-parameter
  selection, EMA, run folders and resume checks;
* :mod:`ldm.training.preview` - preview sampling and the image / caption writer.
"""
