"""Tiny random-weight annotator models for the ``prepare_data.py`` tests, built from transformers
configs and saved like downloaded models (``save_pretrained``); nothing is downloaded."""
from __future__ import annotations

import os

import torch

WORDS = ["a", "the", "red", "blue", "green", "square", "circle", "dog", "cat", "and", "on", "next", "to", "grass"]


def _bert_vocab(folder: str) -> str:
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def write_tiny_captioner(folder: str, seed: int = 0) -> str:
    """BLIP captioner (vision 32 px, 1 layer, width 16) with a 19-word BERT vocabulary."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    os.makedirs(folder, exist_ok=True)
    tok = BertTokenizer(_bert_vocab(folder))
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    processor.save_pretrained(folder)
    return folder


def write_tiny_detector(folder: str, seed: int = 0) -> str:
    """OWLv2 (vision 32 px / patch 8 -> 16 boxes, text width 16) with the CLIP BPE tokenizer."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from ldm.modules.encoders.clip_tokenizer import build_clip_tokenizer

    os.makedirs(folder, exist_ok=True)
    build_clip_tokenizer().save_pretrained(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    cfg = Owlv2Config(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(cfg)
    with torch.no_grad():  # boxes = the patch grid prior (8x8 px at 32 px), so they are usable boxes
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tok).save_pretrained(folder)
    return folder


def write_tiny_depth(folder: str, seed: int = 0) -> str:
    """DPT depth model (ViT 32 px, 1 layer)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                    fusion_hidden_size=8, head_hidden_size=8, reassemble_factors=[4, 2, 1, 0.5])
    torch.manual_seed(seed)
    DPTForDepthEstimation(cfg).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def write_tiny_segmenter(folder: str, seed: int = 0) -> str:
    """SegFormer with the 150 ADE20K classes (widths 8-16)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    cfg = SegformerConfig(num_labels=150, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                          decoder_hidden_size=16)
    torch.manual_seed(seed)
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_tiny_pose(folder: str, seed: int = 0) -> str:
    """ViTPose (COCO 17 keypoints) on 32x24 person crops."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                     image_size=[32, 24], patch_size=[8, 8], out_indices=[1])
    cfg = VitPoseConfig(backbone_config=backbone, num_labels=17, scale_factor=4, use_simple_decoder=True)
    torch.manual_seed(seed)
    VitPoseForPoseEstimation(cfg).save_pretrained(folder)
    VitPoseImageProcessor(size={"height": 32, "width": 24}).save_pretrained(folder)
    return folder


def write_tiny_grounding_dino(folder: str, seed: int = 0) -> str:
    """Grounding DINO (Swin 2 stages, d_model 32, 10 queries) with the BERT vocabulary above."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    os.makedirs(folder, exist_ok=True)
    tok = BertTokenizer(_bert_vocab(folder))
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                   window_size=2, out_features=["stage1", "stage2"]),
        text_config=BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=2, encoder_n_points=1,
        decoder_n_points=1, max_text_len=32, use_timm_backbone=False)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 48}),
                           tokenizer=tok).save_pretrained(folder)
    return folder
