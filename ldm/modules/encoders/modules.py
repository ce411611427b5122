"""Frozen CLIP text encoder (SD v1 conditioning), loadable from official GLIGEN/SD checkpoints."""
from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import nn

from ldm.devices import device_available

OPENAI_CLIP_L14 = "openai/clip-vit-large-patch14"

# CLIP ViT-L/14 text tower, so the architecture can be built without any download: official
# checkpoints always carry the text-encoder weights.
_CLIP_L14_TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=1,
)


@lru_cache(maxsize=1)
def _shared_tokenizer():
    from .clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def _text_config(version: str):
    from transformers import CLIPTextConfig

    if version == OPENAI_CLIP_L14:
        return CLIPTextConfig(**_CLIP_L14_TEXT_CONFIG)
    return CLIPTextConfig.from_pretrained(version)


class AbstractEncoder(nn.Module):
    def encode(self, *args, **kwargs):
        raise NotImplementedError


class FrozenCLIPEmbedder(AbstractEncoder):
    """CLIP text transformer returning the last hidden state, as Stable Diffusion v1 uses it.

    Args:
        version: ``"openai/clip-vit-large-patch14"`` (architecture built in), a local directory
            or a Hub repo id holding a ``CLIPTextConfig``.
        device: kept for config compatibility; inputs follow the module's own device.
        max_length: token context length (77).
        pretrained: also load weights from ``version`` (Hub cache / local dir). Off by default
            because GLIGEN and SD checkpoints carry these weights.
        text_config: ``CLIPTextConfig`` keyword arguments overriding ``version`` (self-contained
            configs, e.g. small test models).

    ``state_dict()`` uses transformers-5 names (``transformer.embeddings.*``); ``load_state_dict``
    also accepts the official transformers-4 names (``transformer.text_model.*`` plus the
    ``position_ids`` buffer).
    """

    def __init__(self, version: str = OPENAI_CLIP_L14, device: str = "cpu", max_length: int = 77,
                 pretrained: bool = False, text_config: dict | None = None):
        super().__init__()
        from transformers import CLIPTextModel

        self.version = version
        self.max_length = max_length
        self.tokenizer = _shared_tokenizer()
        if pretrained:
            self.transformer = CLIPTextModel.from_pretrained(version)
        elif text_config is not None:
            from transformers import CLIPTextConfig

            self.transformer = CLIPTextModel(CLIPTextConfig(**text_config))
        else:
            self.transformer = CLIPTextModel(_text_config(version))
        self.register_load_state_dict_pre_hook(_accept_official_text_encoder_keys)
        self.freeze()
        if device and device != "cpu" and device_available(device):
            self.to(device)

    def freeze(self):
        self.transformer.eval()
        for p in self.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True):
        """Always stays in eval mode (frozen)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.transformer.embeddings.token_embedding.weight.device

    def tokenize(self, text: list[str]) -> torch.Tensor:
        """text: list of B strings -> input_ids (B, 77), padded with ``<|endoftext|>`` (49407)."""
        batch = self.tokenizer(text, truncation=True, max_length=self.max_length, return_length=True,
                               return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
        return batch["input_ids"]

    def forward(self, text: list[str], return_pooler_output: bool = False):
        """text: list of B strings -> last hidden state (B, 77, D) [, pooled (B, D)]."""
        tokens = self.tokenize(list(text)).to(self.device)
        out = self.transformer(input_ids=tokens)
        if return_pooler_output:
            return out.last_hidden_state, out.pooler_output
        return out.last_hidden_state

    def encode(self, text: list[str], return_pooler_output: bool = False):
        return self(text, return_pooler_output=return_pooler_output)


def _accept_official_text_encoder_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Rename transformers-4 keys (``transformer.text_model.*``) and drop the ``position_ids`` buffer."""
    old, new = prefix + "transformer.text_model.", prefix + "transformer."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)
    state_dict.pop(prefix + "transformer.embeddings.position_ids", None)
