"""The official MiDaS layout <-> transformers ``DPTForDepthEstimation`` layout, as data.

Facts from transformers' own conversion scripts (``convert_dpt_to_pytorch.py``,
``convert_dpt_hybrid_to_pytorch.py``, ``convert_dpt_beit_to_hf.py``,
``convert_dpt_swinv2_to_hf.py``) and ``modeling_dpt.py``; the key names are the hub layout
(``Intel/dpt-large``, ``Intel/dpt-hybrid-midas``, ``Intel/dpt-beit-*``, ``Intel/dpt-swinv2-*``),
which every transformers release since 4.40 loads and which transformers 5 still writes.

What is more than a rename: the fused ``attn.qkv`` rows split into query/key/value (for BEiT and
SwinV2 the official q and v biases are their own tensors and the key has no bias); the fusion
blocks are numbered in reverse (``refinenet4`` is the first fusion layer); keys that the HF model
has no place for are listed in :data:`DROPPED_OFFICIAL_KEYS` with the reason.
"""

from __future__ import annotations

from .keymap import Dropped, KeyRule

__all__ = [
    "HF_VARIANTS",
    "FAMILY_OF",
    "RULES",
    "DROPPED_OFFICIAL_KEYS",
    "DROPPED_HF_KEYS",
    "HF_CONFIGS",
    "HUB_NAMES",
]

# the variants transformers has an architecture for, and the hub repository each mirrors
HUB_NAMES: dict[str, str] = {
    "dpt_large_384": "Intel/dpt-large",
    "dpt_hybrid_384": "Intel/dpt-hybrid-midas",
    "dpt_beit_large_512": "Intel/dpt-beit-large-512",
    "dpt_beit_large_384": "Intel/dpt-beit-large-384",
    "dpt_beit_base_384": "Intel/dpt-beit-base-384",
    "dpt_swin2_large_384": "Intel/dpt-swinv2-large-384",
    "dpt_swin2_base_384": "Intel/dpt-swinv2-base-384",
    "dpt_swin2_tiny_256": "Intel/dpt-swinv2-tiny-256",
}
HF_VARIANTS: tuple[str, ...] = tuple(HUB_NAMES)
FAMILY_OF: dict[str, str] = {
    "dpt_large_384": "vit", "dpt_hybrid_384": "hybrid",
    "dpt_beit_large_512": "beit", "dpt_beit_large_384": "beit", "dpt_beit_base_384": "beit",
    "dpt_swin2_large_384": "swin2", "dpt_swin2_base_384": "swin2", "dpt_swin2_tiny_256": "swin2",
}  # fmt: skip

# ---- key rules ---------------------------------------------------------------------------------
_PM = "pretrained.model"

_DECODER = (  # the DPT neck and head, every family
    KeyRule("scratch.layer{k}_rn.weight", "neck.convs.{k-1}.weight"),
    # refinenet4 fuses first: HF numbers the fusion layers 0..3 from the deepest
    KeyRule("scratch.refinenet{n}.out_conv.{p}", "neck.fusion_stage.layers.{4-n}.projection.{p}"),
    KeyRule("scratch.refinenet{n}.resConfUnit{u}.conv{c}.{p}",
            "neck.fusion_stage.layers.{4-n}.residual_layer{u}.convolution{c}.{p}"),
    KeyRule("scratch.output_conv.{i}.{p}", "head.head.{i}.{p}"),
)
_READOUT = (  # token -> feature map reassembly of the ViT-like backbones
    KeyRule("pretrained.act_postprocess{k}.0.project.0.{p}",
            "neck.reassemble_stage.readout_projects.{k-1}.0.{p}"),
    KeyRule("pretrained.act_postprocess{k}.3.{p}",
            "neck.reassemble_stage.layers.{k-1}.projection.{p}"),
    KeyRule("pretrained.act_postprocess{k}.4.{p}", "neck.reassemble_stage.layers.{k-1}.resize.{p}"),
)


def _vit_blocks(hf: str) -> tuple[KeyRule, ...]:
    """timm ViT/BEiT block parts shared by three families; ``hf`` is the HF layer prefix."""
    return (
        KeyRule(f"{_PM}.blocks.{{i}}.norm1.{{p}}", f"{hf}.{{i}}.layernorm_before.{{p}}"),
        KeyRule(f"{_PM}.blocks.{{i}}.norm2.{{p}}", f"{hf}.{{i}}.layernorm_after.{{p}}"),
        KeyRule(f"{_PM}.blocks.{{i}}.attn.proj.{{p}}", f"{hf}.{{i}}.attention.output.dense.{{p}}"),
        KeyRule(f"{_PM}.blocks.{{i}}.mlp.fc1.{{p}}", f"{hf}.{{i}}.intermediate.dense.{{p}}"),
        KeyRule(f"{_PM}.blocks.{{i}}.mlp.fc2.{{p}}", f"{hf}.{{i}}.output.dense.{{p}}"),
    )


_VIT_ENCODER = (
    KeyRule(f"{_PM}.cls_token", "dpt.embeddings.cls_token"),
    KeyRule(f"{_PM}.pos_embed", "dpt.embeddings.position_embeddings"),
    *_vit_blocks("dpt.encoder.layer"),
    # timm fuses q, k, v (weight and bias) in one Linear; HF has three
    KeyRule(f"{_PM}.blocks.{{i}}.attn.qkv.{{p}}",
            tuple(f"dpt.encoder.layer.{{i}}.attention.attention.{n}.{{p}}"
                  for n in ("query", "key", "value")),
            "split-qkv"),
    KeyRule(f"{_PM}.norm.{{p}}", "dpt.layernorm.{p}"),
)

_BIT = f"{_PM}.patch_embed.backbone"
_HF_BIT = "dpt.embeddings.backbone.bit"
_HYBRID_STEM = (  # timm ResNetV2 (weight-standardised convs, GroupNorm) -> HF BiT
    KeyRule(f"{_BIT}.stem.conv.weight", f"{_HF_BIT}.embedder.convolution.weight"),
    KeyRule(f"{_BIT}.stem.norm.{{p}}", f"{_HF_BIT}.embedder.norm.{{p}}"),
    KeyRule(f"{_BIT}.stages.{{s}}.blocks.{{b}}.conv{{c}}.weight",
            f"{_HF_BIT}.encoder.stages.{{s}}.layers.{{b}}.conv{{c}}.weight"),
    KeyRule(f"{_BIT}.stages.{{s}}.blocks.{{b}}.norm{{c}}.{{p}}",
            f"{_HF_BIT}.encoder.stages.{{s}}.layers.{{b}}.norm{{c}}.{{p}}"),
    KeyRule(f"{_BIT}.stages.{{s}}.blocks.{{b}}.downsample.conv.weight",
            f"{_HF_BIT}.encoder.stages.{{s}}.layers.{{b}}.downsample.conv.weight"),
    KeyRule(f"{_BIT}.stages.{{s}}.blocks.{{b}}.downsample.norm.{{p}}",
            f"{_HF_BIT}.encoder.stages.{{s}}.layers.{{b}}.downsample.norm.{{p}}"),
    KeyRule(f"{_PM}.patch_embed.proj.{{p}}", "dpt.embeddings.projection.{p}"),
)

_BEIT_LAYER = "backbone.encoder.layer"
_BEIT_ATTN = f"{_BEIT_LAYER}.{{i}}.attention.attention"
_BEIT_ENCODER = (
    KeyRule(f"{_PM}.cls_token", "backbone.embeddings.cls_token"),
    KeyRule(f"{_PM}.patch_embed.proj.{{p}}", "backbone.embeddings.patch_embeddings.projection.{p}"),
    KeyRule(f"{_PM}.blocks.{{i}}.gamma_{{g}}", f"{_BEIT_LAYER}.{{i}}.lambda_{{g}}"),
    *_vit_blocks(_BEIT_LAYER),
    # BEiT's key projection has no bias: only the weight rows are fused
    KeyRule(f"{_PM}.blocks.{{i}}.attn.qkv.weight",
            tuple(f"{_BEIT_ATTN}.{n}.weight" for n in ("query", "key", "value")), "split-qkv"),
    KeyRule(f"{_PM}.blocks.{{i}}.attn.q_bias", f"{_BEIT_ATTN}.query.bias"),
    KeyRule(f"{_PM}.blocks.{{i}}.attn.v_bias", f"{_BEIT_ATTN}.value.bias"),
    KeyRule(f"{_PM}.blocks.{{i}}.attn.relative_position_bias_table",
            f"{_BEIT_ATTN}.relative_position_bias.relative_position_bias_table"),
)

_SW = f"{_PM}.layers.{{s}}.blocks.{{b}}"
_HF_SW = "backbone.encoder.layers.{s}.blocks.{b}"
_SWIN2_ENCODER = (
    KeyRule(f"{_PM}.patch_embed.proj.{{p}}", "backbone.embeddings.patch_embeddings.projection.{p}"),
    KeyRule(f"{_PM}.patch_embed.norm.{{p}}", "backbone.embeddings.norm.{p}"),
    KeyRule(f"{_SW}.attn.logit_scale", f"{_HF_SW}.attention.self.logit_scale"),
    KeyRule(f"{_SW}.attn.cpb_mlp.{{k}}.{{p}}",
            f"{_HF_SW}.attention.self.continuous_position_bias_mlp.{{k}}.{{p}}"),
    # as BEiT: fused weight rows, separate q and v biases, no key bias
    KeyRule(f"{_SW}.attn.qkv.weight",
            tuple(f"{_HF_SW}.attention.self.{n}.weight" for n in ("query", "key", "value")),
            "split-qkv"),
    KeyRule(f"{_SW}.attn.q_bias", f"{_HF_SW}.attention.self.query.bias"),
    KeyRule(f"{_SW}.attn.v_bias", f"{_HF_SW}.attention.self.value.bias"),
    KeyRule(f"{_SW}.attn.proj.{{p}}", f"{_HF_SW}.attention.output.dense.{{p}}"),
    KeyRule(f"{_SW}.norm1.{{p}}", f"{_HF_SW}.layernorm_before.{{p}}"),
    KeyRule(f"{_SW}.norm2.{{p}}", f"{_HF_SW}.layernorm_after.{{p}}"),
    KeyRule(f"{_SW}.mlp.fc1.{{p}}", f"{_HF_SW}.intermediate.dense.{{p}}"),
    KeyRule(f"{_SW}.mlp.fc2.{{p}}", f"{_HF_SW}.output.dense.{{p}}"),
    # timm 0.6.12 layout: patch merging at the end of each stage, as in HF Swinv2
    KeyRule(f"{_PM}.layers.{{s}}.downsample.reduction.weight",
            "backbone.encoder.layers.{s}.downsample.reduction.weight"),
    KeyRule(f"{_PM}.layers.{{s}}.downsample.norm.{{p}}",
            "backbone.encoder.layers.{s}.downsample.norm.{p}"),
)

RULES: dict[str, tuple[KeyRule, ...]] = {
    "vit": (*_VIT_ENCODER,
            KeyRule(f"{_PM}.patch_embed.proj.{{p}}",
                    "dpt.embeddings.patch_embeddings.projection.{p}"),
            *_READOUT, *_DECODER),
    "hybrid": (*_VIT_ENCODER, *_HYBRID_STEM, *_READOUT, *_DECODER),
    "beit": (*_BEIT_ENCODER, *_READOUT, *_DECODER),
    "swin2": (*_SWIN2_ENCODER, *_DECODER),
}

# official keys DPTForDepthEstimation has no place for; ``refill`` says how HF -> official
# recreates them (every one is unused by the depth forward or computed from the architecture)
DROPPED_OFFICIAL_KEYS: tuple[Dropped, ...] = (
    Dropped(r"pretrained\.model\.head\.(weight|bias)",
            "the backbone's ImageNet classifier: not part of a depth model", "zeros"),
    Dropped(r"pretrained\.model\.fc_norm\.weight",
            "BEiT's pooled-feature norm, used only before the classifier", "ones"),
    Dropped(r"pretrained\.model\.fc_norm\.bias",
            "BEiT's pooled-feature norm, used only before the classifier", "zeros"),
    Dropped(r"pretrained\.model\.norm\.weight",
            "SwinV2's final norm: MiDaS reads the stages' outputs, never the normed last one "
            "(HF's Swinv2Backbone has no such norm)", "ones"),
    Dropped(r"pretrained\.model\.norm\.bias", "SwinV2's final norm (see its weight)", "zeros"),
    Dropped(r".*\.(relative_position_index|relative_coords_table|attn_mask)",
            "derived buffer: computed from the window size by both models", "derived"),
)

# hub-layout keys with no official counterpart: buffers older transformers releases saved
DROPPED_HF_KEYS: tuple[Dropped, ...] = (
    Dropped(r".*\.(relative_position_index|relative_coords_table)",
            "derived buffer saved by older transformers releases; recomputed"),
)

# ---- configs, as the Intel hub configs are ----------------------------------------------------
# One deliberate difference: ``layer_norm_eps`` is the official models' 1e-6 (timm ViT and
# BEiT), where the Intel configs say 1e-12; with it the HF model reproduces MiDaS exactly.
_DPT_COMMON: dict[str, object] = {
    "architectures": ["DPTForDepthEstimation"],
    "model_type": "dpt",
    "fusion_hidden_size": 256,
    "head_in_index": -1,
    "readout_type": "project",
    "use_batch_norm_in_fusion_residual": False,
    "add_projection": False,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "patch_size": 16,
}


def _vit(size: str) -> dict[str, object]:
    large = size == "large"
    return {
        "hidden_size": 1024 if large else 768,
        "num_hidden_layers": 24 if large else 12,
        "num_attention_heads": 16 if large else 12,
        "intermediate_size": 4096 if large else 3072,
        "layer_norm_eps": 1e-6,
        "image_size": 384,
    }


def _beit(size: str, image_size: int) -> dict[str, object]:
    large = size == "large"
    stages = (6, 12, 18, 24) if large else (3, 6, 9, 12)  # hooks (5, 11, 17, 23) / (2, 5, 8, 11)
    return {
        "model_type": "beit",
        "image_size": image_size,
        "patch_size": 16,
        "hidden_size": 1024 if large else 768,
        "num_hidden_layers": 24 if large else 12,
        "num_attention_heads": 16 if large else 12,
        "intermediate_size": 4096 if large else 3072,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "use_relative_position_bias": True,
        "use_shared_relative_position_bias": False,
        "use_absolute_position_embeddings": False,
        "use_mask_token": False,
        "use_mean_pooling": True,
        "layer_scale_init_value": 0.1,
        "reshape_hidden_states": False,
        "out_features": [f"stage{i}" for i in stages],
    }


def _swin2(embed_dim: int, depths: list[int], heads: list[int], window: int,
           pretrained_windows: list[int], image_size: int) -> dict[str, object]:
    return {
        "model_type": "swinv2",
        "image_size": image_size,
        "patch_size": 4,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "pretrained_window_sizes": pretrained_windows,
        "layer_norm_eps": 1e-5,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


_SWIN2_DEEP = [2, 2, 18, 2]
HF_CONFIGS: dict[str, dict[str, object]] = {
    "dpt_large_384": {
        **_DPT_COMMON, **_vit("large"),
        "is_hybrid": False,
        "backbone_out_indices": [5, 11, 17, 23],
        "neck_hidden_sizes": [256, 512, 1024, 1024],
        "reassemble_factors": [4, 2, 1, 0.5],
    },
    "dpt_hybrid_384": {
        **_DPT_COMMON, **_vit("base"),
        "is_hybrid": True,
        "backbone_out_indices": [2, 5, 8, 11],
        "neck_hidden_sizes": [256, 512, 768, 768],
        "reassemble_factors": [1, 1, 1, 0.5],
        "backbone_featmap_shape": [1, 1024, 24, 24],
        "neck_ignore_stages": [0, 1],  # ResNet stages 1-2 feed the neck directly
        "backbone_config": {
            "model_type": "bit",
            "global_padding": "same",
            "layer_type": "bottleneck",
            "depths": [3, 4, 9],
            "out_features": ["stage1", "stage2", "stage3"],
            "embedding_dynamic_padding": True,
        },
    },
    "dpt_beit_large_512": {
        **_DPT_COMMON, "neck_hidden_sizes": [256, 512, 1024, 1024],
        "backbone_config": _beit("large", 512),
    },
    "dpt_beit_large_384": {
        **_DPT_COMMON, "neck_hidden_sizes": [256, 512, 1024, 1024],
        "backbone_config": _beit("large", 384),
    },
    "dpt_beit_base_384": {
        **_DPT_COMMON, "neck_hidden_sizes": [96, 192, 384, 768],
        "backbone_config": _beit("base", 384),
    },
    "dpt_swin2_large_384": {
        **_DPT_COMMON, "neck_hidden_sizes": [192, 384, 768, 1536],
        "backbone_config": _swin2(192, _SWIN2_DEEP, [6, 12, 24, 48], 24, [12, 12, 12, 6], 384),
    },
    "dpt_swin2_base_384": {
        **_DPT_COMMON, "neck_hidden_sizes": [128, 256, 512, 1024],
        "backbone_config": _swin2(128, _SWIN2_DEEP, [4, 8, 16, 32], 24, [12, 12, 12, 6], 384),
    },
    "dpt_swin2_tiny_256": {
        **_DPT_COMMON, "neck_hidden_sizes": [96, 192, 384, 768],
        # the official tiny model is timm's window-16 SwinV2-T, trained from scratch at 256 px
        "backbone_config": _swin2(96, [2, 2, 6, 2], [3, 6, 12, 24], 16, [0, 0, 0, 0], 256),
    },
}
