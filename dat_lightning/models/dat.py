"""DAT (CVPR 2022) and DAT++ backbones, state-dict compatible with the official checkpoints.

One configurable :class:`DAT` class covers both generations; ``generation`` selects the small
conventions in which they differ (see :mod:`dat_lightning.models.layers.deformable_attention`).
Stage specs: ``L`` local window, ``S`` shifted window, ``D`` deformable, ``N`` neighborhood.

The eight official presets are built from the constructor settings of the official configs
(:data:`OFFICIAL_CONFIGS`) and registered with timm, so ``timm.create_model("dat_tiny")`` works once
``dat_lightning`` is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureInfo
from torch.utils.checkpoint import checkpoint

from .layers import (
    ConvMLP,
    DeformableAttention,
    LayerNorm2d,
    NeighborhoodAttention2d,
    TransformerMLP,
    WindowAttention,
)
from .official_configs import OFFICIAL_CONFIGS, official_kwargs
from .weights import WEIGHTS, download_file

__all__ = ["DAT", "OFFICIAL_CONFIGS", "DATFeatures", "DATStage"]

BLOCK_TYPES = {"L": "local window", "S": "shifted window", "D": "deformable",
               "N": "neighborhood"}


class LayerScale2d(nn.Module):
    """Per-channel scale of a residual branch (``weight`` key, as in DAT++)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(-1, 1, 1)


class _PatchMergeConv(nn.Conv2d):
    """DAT v1 2x2/stride-2 down-sampling conv that also accepts 1-pixel-wide maps.

    Odd sizes are floored like the official code; a map with a side of 1 (inputs below 64 px) is
    zero-padded to 2 on that side instead of failing.
    """

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(in_chs, out_chs, 2, 2, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_b, pad_r = int(x.shape[2] < 2), int(x.shape[3] < 2)
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        return super().forward(x)


class DATStage(nn.Module):
    """One resolution stage: ``depth`` blocks of attention + MLP with pre-norm residuals.

    Args:
        dim: channels of the stage.
        depth: number of blocks.
        spec: block type per block (``L``, ``S``, ``D``, ``N``).
        fmap_size: feature-map size at the model's build resolution.
        heads: attention heads.
        generation: ``"v1"`` or ``"pp"``.
        window_size: window of ``L``/``S`` blocks.
        groups: offset groups of ``D`` blocks.
        use_pe: relative position bias in ``D`` blocks.
        stride: offset-network stride of ``D`` blocks.
        offset_range_factor: offset bound of ``D`` blocks.
        ksize: offset-network kernel of ``D`` blocks.
        nat_ksize: kernel of ``N`` blocks.
        use_dwc_mlp: DAT++ MLP with a depthwise conv.
        use_lpu: DAT++ local perception unit before each block.
        layer_scale_value: initial layer scale; <= 0 disables it.
        expansion: MLP expansion ratio.
        drop: dropout after projections and in the MLP.
        attn_drop: attention dropout.
        drop_path: stochastic depth rate per block.
    """

    def __init__(self, dim: int, depth: int, spec: Sequence[str], fmap_size: tuple[int, int],
                 heads: int, generation: str, window_size: int = 7, groups: int = 1,
                 use_pe: bool = True, stride: int = 1, offset_range_factor: float = -1,
                 ksize: int = 3, nat_ksize: int = 7, use_dwc_mlp: bool = False,
                 use_lpu: bool = False, layer_scale_value: float = -1.0, expansion: int = 4,
                 drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = ()) -> None:
        super().__init__()
        self.depth = depth
        self.spec = tuple(spec)
        self.layer_norms = nn.ModuleList(LayerNorm2d(dim) for _ in range(2 * depth))
        mlp = ConvMLP if use_dwc_mlp else TransformerMLP
        self.mlps = nn.ModuleList(mlp(dim, expansion, drop) for _ in range(depth))
        self.attns = nn.ModuleList()
        for kind in self.spec:
            if kind in ("L", "S"):
                shift = math.ceil(window_size / 2) if kind == "S" else 0
                attn = WindowAttention(dim, heads, window_size, fmap_size, shift, attn_drop, drop)
            elif kind == "D":
                attn = DeformableAttention(dim, heads, groups, fmap_size, stride, ksize,
                                           offset_range_factor, use_pe, generation,
                                           attn_drop, drop)
            elif kind == "N":
                attn = NeighborhoodAttention2d(dim, nat_ksize, heads, attn_drop, drop)
            else:
                raise ValueError(f"unknown block type {kind!r} in stage spec {list(spec)}; "
                                 f"supported: {BLOCK_TYPES}")
            self.attns.append(attn)
        self.drop_path = nn.ModuleList(
            DropPath(p) if p > 0 else nn.Identity() for p in (list(drop_path) or [0.0] * depth))
        if layer_scale_value > 0:
            self.layer_scales = nn.ModuleList(
                LayerScale2d(dim, layer_scale_value) for _ in range(2 * depth))
        else:
            self.layer_scales = None
        if use_lpu:
            self.local_perception_units = nn.ModuleList(
                nn.Conv2d(dim, dim, 3, 1, 1, groups=dim) for _ in range(depth))
        else:
            self.local_perception_units = None

    def _block(self, d: int, x: torch.Tensor) -> torch.Tensor:
        if self.local_perception_units is not None:
            x = x + self.local_perception_units[d](x)
        y = self.attns[d](self.layer_norms[2 * d](x))
        if self.layer_scales is not None:
            y = self.layer_scales[2 * d](y)
        x = x + self.drop_path[d](y)
        y = self.mlps[d](self.layer_norms[2 * d + 1](x))
        if self.layer_scales is not None:
            y = self.layer_scales[2 * d + 1](y)
        return x + self.drop_path[d](y)

    def forward(self, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
        """Run the blocks; with ``grad_checkpointing`` each block is recomputed in backward."""
        for d in range(self.depth):
            if grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, d, x, use_reentrant=False)
            else:
                x = self._block(d, x)
        return x


def iter_stage_outputs(x: torch.Tensor, stages: nn.ModuleList, down_projs: nn.ModuleList,
                       last: int, grad_checkpointing: bool = False):
    """Run stem output ``x`` through ``stages[0..last]``, yielding ``(i, map)`` before each
    down-sampling; with ``grad_checkpointing`` each block is recomputed in the backward pass."""
    for i in range(last + 1):
        x = stages[i](x, grad_checkpointing)
        yield i, x
        if i < last:
            x = down_projs[i](x)


def _four(value: Any, name: str) -> list:
    values = list(value)
    if len(values) != 4:
        raise ValueError(f"{name} needs one value per stage (4), got {values}")
    return values


class DAT(nn.Module):
    """Vision Transformer with Deformable Attention (DAT v1 and DAT++).

    Args:
        img_size: input size the model is built for; sizes position tables and stored masks.
            Any input size works at run time.
        in_chans: input channels.
        num_classes: classifier outputs; 0 removes the classifier.
        generation: ``"v1"`` (DAT) or ``"pp"`` (DAT++).
        dim_stem: stem channels.
        dims: channels per stage.
        depths: blocks per stage.
        stage_spec: block types per stage (``L``, ``S``, ``D``, ``N``).
        heads: attention heads per stage.
        window_sizes: window of ``L``/``S`` blocks per stage.
        groups: offset groups of ``D`` blocks per stage.
        use_pes: relative position bias in ``D`` blocks per stage.
        strides: offset-network stride per stage (v1 uses 1).
        offset_range_factor: offset bound per stage (-1: squash/clamp).
        ksizes: offset-network kernel per stage.
        nat_ksizes: neighborhood-attention kernel per stage.
        use_dwc_mlps: DAT++ MLPs with a depthwise conv, per stage.
        use_lpus: DAT++ local perception units, per stage.
        use_conv_patches: DAT++ convolutional stem and down-sampling.
        layer_scale_values: initial layer scale per stage (<= 0: none).
        expansion: MLP expansion ratio.
        patch_size: stem stride.
        drop_rate: dropout after projections and in MLPs.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        global_pool: ``"avg"`` or ``""`` (no pooling in :meth:`forward_head`).
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        generation: str = "v1",
        dim_stem: int = 96,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        stage_spec: Sequence[Sequence[str]] = (
            ("L", "S"), ("L", "S"), ("L", "D", "L", "D", "L", "D"), ("L", "D")),
        heads: Sequence[int] = (3, 6, 12, 24),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        groups: Sequence[int] = (-1, -1, 3, 6),
        use_pes: Sequence[bool] = (False, False, True, True),
        strides: Sequence[int] = (-1, -1, 1, 1),
        offset_range_factor: Sequence[float] = (-1, -1, 2, 2),
        ksizes: Sequence[int] = (9, 7, 5, 3),
        nat_ksizes: Sequence[int] = (7, 7, 7, 7),
        use_dwc_mlps: Sequence[bool] = (False, False, False, False),
        use_lpus: Sequence[bool] = (False, False, False, False),
        use_conv_patches: bool = False,
        layer_scale_values: Sequence[float] = (-1, -1, -1, -1),
        expansion: int = 4,
        patch_size: int = 4,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if generation not in ("v1", "pp"):
            raise ValueError(f"generation must be 'v1' (DAT) or 'pp' (DAT++), got {generation!r}")
        if generation == "v1" and (use_conv_patches or any(use_dwc_mlps)):
            raise ValueError("use_conv_patches and use_dwc_mlps are DAT++ features; set "
                             "generation='pp' to use them")
        dims, depths, heads = _four(dims, "dims"), _four(depths, "depths"), _four(heads, "heads")
        stage_spec = _four(stage_spec, "stage_spec")
        for i, (spec, depth) in enumerate(zip(stage_spec, depths)):
            if len(spec) != depth:
                raise ValueError(f"stage {i}: stage_spec {list(spec)} has {len(spec)} entries but "
                                 f"depths[{i}] = {depth}")
        self.generation = generation
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.patch_size = patch_size

        if use_conv_patches:
            self.patch_proj = nn.Sequential(
                nn.Conv2d(in_chans, dim_stem // 2, 3, patch_size // 2, 1),
                LayerNorm2d(dim_stem // 2),
                nn.GELU(),
                nn.Conv2d(dim_stem // 2, dim_stem, 3, patch_size // 2, 1),
                LayerNorm2d(dim_stem),
            )
        else:
            self.patch_proj = nn.Sequential(
                nn.Conv2d(in_chans, dim_stem, patch_size, patch_size, 0),
                LayerNorm2d(dim_stem),
            )
        if dim_stem != dims[0] or any(dims[i + 1] != 2 * dims[i] for i in range(3)):
            raise ValueError(f"DAT needs dims[0] == dim_stem and each stage to double the "
                             f"channels, got dim_stem={dim_stem}, dims={dims}")

        fmap = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i in range(4):
            self.stages.append(DATStage(
                dims[i], depths[i], stage_spec[i], (fmap, fmap), heads[i], generation,
                window_size=window_sizes[i], groups=_four(groups, "groups")[i],
                use_pe=_four(use_pes, "use_pes")[i], stride=_four(strides, "strides")[i],
                offset_range_factor=_four(offset_range_factor, "offset_range_factor")[i],
                ksize=_four(ksizes, "ksizes")[i], nat_ksize=_four(nat_ksizes, "nat_ksizes")[i],
                use_dwc_mlp=_four(use_dwc_mlps, "use_dwc_mlps")[i],
                use_lpu=_four(use_lpus, "use_lpus")[i],
                layer_scale_value=_four(layer_scale_values, "layer_scale_values")[i],
                expansion=expansion, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
            ))
            self.feature_info.append(
                dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}"))
            fmap //= 2

        self.down_projs = nn.ModuleList()
        for i in range(3):
            if use_conv_patches:
                conv = nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1, bias=False)
            else:
                conv = _PatchMergeConv(dims[i], dims[i + 1])
            self.down_projs.append(nn.Sequential(conv, LayerNorm2d(dims[i + 1])))

        self.cls_norm = LayerNorm2d(dims[-1])
        # No further initialisation: the official reset_parameters() is a no-op (it iterates
        # parameters, not modules), so the official models keep PyTorch's defaults, as here.
        self.cls_head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    # --- timm model protocol -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (position tables, as the official code)."""
        return {n for n, _ in self.named_parameters()
                if any(k in n for k in self.no_weight_decay_keywords())}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table", "rpe_table", "rpb"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise LR decay: stem, blocks/stages, then the head."""
        return dict(
            stem=r"^patch_proj",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.(?:attns|mlps|local_perception_units)\.(\d+)", None),
                (r"^stages\.(\d+)\.(?:layer_norms|layer_scales)\.(\d+)", None),
                (r"^down_projs\.(\d+)", (99999,)),
                (r"^cls_norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass to save activation memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.cls_head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.cls_head = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                         else nn.Identity())

    def deformable_blocks(self) -> list[tuple[str, DeformableAttention]]:
        """``(name, module)`` of every deformable attention block, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, DeformableAttention)]

    # --- forward -------------------------------------------------------------------------------
    def _stage_outputs(self, x: torch.Tensor, last: int = 3):
        """Yield ``(i, map)`` for stages ``0..last`` (before down-sampling) from an image batch."""
        yield from iter_stage_outputs(self.patch_proj(x), self.stages, self.down_projs, last,
                                      self.grad_checkpointing)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (before down-sampling), timm's ``forward_intermediates`` protocol.

        ``indices``: stage indices, or an int ``n`` for the last ``n`` stages. ``norm`` applies
        the final norm to the last stage's map when it is returned.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"DAT produces NCHW feature maps, output_fmt={output_fmt!r} given")
        if indices is None:
            take = [0, 1, 2, 3]
        elif isinstance(indices, int):
            take = list(range(4 - indices, 4))
        else:
            take = [i % 4 for i in indices]
        intermediates = []
        for i, fmap in self._stage_outputs(x, max(take) if stop_early else 3):
            if i in take:
                intermediates.append(self.cls_norm(fmap) if (norm and i == 3) else fmap)
        if intermediates_only:
            return intermediates
        return self.cls_norm(fmap), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage map ``[B, C, H/32, W/32]``."""
        *_, (_, last) = self._stage_outputs(x)
        return self.cls_norm(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify; ``pre_logits=True`` returns the pooled features."""
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.cls_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DATFeatures(nn.Module):
    """Multi-scale feature maps of a :class:`DAT`, laid out like the official dense-prediction
    backbone (``patch_proj``, ``stages``, ``norms``, ``down_projs``): one output LayerNorm per
    returned map, no classifier. Used by ``timm.create_model(..., features_only=True)``.

    Args:
        model: the DAT to take the stem and stages from.
        out_indices: stages to return (0..3, strides 4/8/16/32); later stages are dropped.
    """

    def __init__(self, model: DAT, out_indices: Sequence[int] = (0, 1, 2, 3), **_: Any) -> None:
        super().__init__()
        self.out_indices = tuple(i % 4 for i in out_indices)
        last = max(self.out_indices)
        self.grad_checkpointing = model.grad_checkpointing
        self.patch_proj = model.patch_proj
        self.stages = model.stages[:last + 1]
        self.norms = nn.ModuleList(
            LayerNorm2d(model.feature_info[i]["num_chs"]) if i in self.out_indices
            else nn.Identity() for i in range(last + 1))
        self.down_projs = model.down_projs[:last]
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass to save activation memory."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image batch -> list of ``[B, C_i, H/s_i, W/s_i]`` maps for ``out_indices``."""
        outputs = iter_stage_outputs(self.patch_proj(x), self.stages, self.down_projs,
                                     len(self.stages) - 1, self.grad_checkpointing)
        return [self.norms[i](y) for i, y in outputs if i in self.out_indices]


def _pretrained_cfg(variant: str) -> dict:
    weights = WEIGHTS[f"{variant}.in1k"]
    size = weights.input_size[-1]
    return dict(
        url=weights.url, num_classes=1000, input_size=weights.input_size,
        pool_size=(size // 32, size // 32), crop_pct=weights.crop_pct, crop_mode="center",
        interpolation=weights.interpolation, mean=weights.mean, std=weights.std,
        first_conv="patch_proj.0", classifier="cls_head", license="apache-2.0",
        origin_url="https://github.com/LeapLabTHU/DAT",
        notes=(f"file {weights.file_name}", f"ImageNet-1K top-1 {weights.top1}",
               f"mirror {weights.mirror}"),
    )


default_cfgs = generate_default_cfgs({name: _pretrained_cfg(name.split(".")[0])
                                      for name in WEIGHTS})


def _pretrained_source(cfg: dict) -> str | Path:
    """The checkpoint a timm ``pretrained_cfg`` points at: its ``file``, else its ``url``
    (downloaded once into the hub cache under the registered file name or the URL's)."""
    if cfg.get("file"):
        return cfg["file"]
    name = f"{cfg['architecture']}.{cfg['tag']}"
    if name in WEIGHTS and cfg.get("url") == WEIGHTS[name].url:
        return name
    if cfg.get("url"):
        return download_file(cfg["url"], Path(urlsplit(cfg["url"]).path).name or f"{name}.pth")
    raise ValueError(f"pretrained_cfg of {name} has neither 'file' nor 'url'; pass "
                     "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')")


def _create_dat(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a preset (features wrapper included); pretrained weights go through
    :func:`~dat_lightning.models.checkpoint.load_checkpoint`, which resizes position tables,
    re-initialises a classifier of another size and reports what it did."""
    from .checkpoint import load_checkpoint  # checkpoint.py imports this module

    model_kwargs = {**official_kwargs(OFFICIAL_CONFIGS[variant]), **kwargs}
    model = build_model_with_cfg(
        DAT, variant, pretrained=False,
        feature_cfg=dict(feature_cls=DATFeatures, out_indices=(0, 1, 2, 3)),
        **model_kwargs,
    )
    if pretrained:
        load_checkpoint(model, _pretrained_source(model.pretrained_cfg))
    return model


@register_model
def dat_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-T (28M params, ImageNet-1K 82.0 top-1 at 224)."""
    return _create_dat("dat_tiny", pretrained, **kwargs)


@register_model
def dat_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-S (ImageNet-1K 83.7 top-1 at 224)."""
    return _create_dat("dat_small", pretrained, **kwargs)


@register_model
def dat_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B (ImageNet-1K 84.0 top-1 at 224)."""
    return _create_dat("dat_base", pretrained, **kwargs)


@register_model
def dat_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B at 384 (ImageNet-1K 84.8 top-1)."""
    return _create_dat("dat_base_384", pretrained, **kwargs)


@register_model
def dat_pp_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-T++ (24M params, ImageNet-1K 83.9 top-1 at 224)."""
    return _create_dat("dat_pp_tiny", pretrained, **kwargs)


@register_model
def dat_pp_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-S++ (ImageNet-1K 84.6 top-1 at 224)."""
    return _create_dat("dat_pp_small", pretrained, **kwargs)


@register_model
def dat_pp_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B++ (ImageNet-1K 84.9 top-1 at 224)."""
    return _create_dat("dat_pp_base", pretrained, **kwargs)


@register_model
def dat_pp_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B++ at 384 (ImageNet-1K 85.9 top-1; built at img_size 224 like the official config)."""
    return _create_dat("dat_pp_base_384", pretrained, **kwargs)
