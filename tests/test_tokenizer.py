"""The offline CLIP tokenizer gives transformers' CLIPTokenizer ids (reference strings)."""
import json

import pytest

from ldm.modules.encoders.clip_tokenizer import build_clip_tokenizer, clip_vocab_and_merges


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_vocabulary_layout():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["a</w>"] == 320


def test_reference_strings(tokenizer, reference_dir):
    data = json.loads((reference_dir / "tokenizer" / "tokenizer_verification.json").read_text())
    assert data["n_strings"] == len(data["results"]) == 33
    for r in data["results"]:
        ids = tokenizer(r["text"], truncation=True, max_length=77)["input_ids"]
        assert ids == r["hf_tokenize"], r["text"]


def test_padding_uses_endoftext(tokenizer):
    ids = tokenizer(["a photo"], padding="max_length", max_length=77, truncation=True)["input_ids"][0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and ids.count(49407) == 77 - 3


def test_truncation_keeps_eos(tokenizer):
    ids = tokenizer(["word " * 200], padding="max_length", max_length=77, truncation=True)["input_ids"][0]
    assert len(ids) == 77 and ids[-1] == 49407
