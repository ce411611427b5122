"""From a folder of images to training TSVs (``DATA/prepare_data.py``).

Modules, one idea each:

* :mod:`.inputs`     – image listing, caption files, box annotation files;
* :mod:`.phrases`    – noun phrases from a caption (rule-based chunker);
* :mod:`.annotators` – captioner, open-vocabulary detector, spatial maps, pose (transformers / OpenCV);
* :mod:`.shards`     – resumable shard commits (temp files + rename, a manifest of finished shards);
* :mod:`.pipeline`   – the run: shards of images -> annotations -> TSV rows + maps;
* :mod:`.outputs`    – ``dataset.yaml``, ``summary.json`` and the modality JSON files, from the shard records;
* :mod:`.preview`    – annotations drawn on images.
"""
