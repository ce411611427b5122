"""Offline CLIP tokenizer.

CLIP's BPE vocabulary ships inside ``open_clip_torch`` (``bpe_simple_vocab_16e6.txt.gz``).
We turn it into the vocabulary / merge list that transformers' ``CLIPTokenizer`` expects, so
token ids are identical to ``CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")``
without touching the Hub.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache

N_MERGES = 49152 - 256 - 2  # 48894 merges, as in CLIP


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def open_clip_bpe_path() -> str:
    """Path of the BPE file bundled with ``open_clip_torch``."""
    import open_clip  # noqa: local import, heavy-ish

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP BPE vocabulary not found in open_clip_torch: {path}")
    return path


@lru_cache(maxsize=1)
def clip_vocab_and_merges(bpe_path: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build CLIP's 49408-entry vocabulary and its 48894 merges from the BPE file."""
    with gzip.open(bpe_path or open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` with CLIP's ids, built offline.

    pad = unk = eos = ``<|endoftext|>`` (id 49407), bos = ``<|startoftext|>`` (id 49406).
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
