"""DAT (CVPR 2022) and DAT++ backbones, state-dict compatible with the official checkpoints.

One configurable :class:`DAT` class covers both generations; ``generation`` selects the small
conventions in which they differ (see :mod:`dat_lightning.models.layers.deformable_attention`).
Stage specs: ``L`` local window, ``S`` shifted window, ``D`` deformable, ``N`` neighborhood.

This module is the architecture only. The presets (built from the official configs,
:data:`OFFICIAL_CONFIGS`) are registered with timm by :mod:`dat_lightning.models.presets`, which
also wires in the weights registry and the checkpoint loader.

The model owns its parameter layout: :func:`dat_layer_id` says which layer each parameter belongs
to and :data:`NO_DECAY_KEYWORDS` which take no weight decay; ``group_matcher`` (timm's layer-wise
LR decay), ``no_weight_decay`` and :func:`dat_lightning.tasks.optim.param_groups` all ask it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from timm.layers import DropPath, to_2tuple
from timm.models import FeatureInfo
from torch.utils.checkpoint import checkpoint

from .layers import (
    ConvMLP,
    DeformableAttention,
    LayerNorm2d,
    NeighborhoodAttention2d,
    TransformerMLP,
    WindowAttention,
    set_attention_recompute,
)
from .layers.conv import residual_depthwise_conv
from .layers.padding import pad_bottom_right

__all__ = ["DAT", "GLOBAL_POOLS", "NO_DECAY_KEYWORDS", "DATFeatures", "DATStage", "dat_layer_id"]

BLOCK_TYPES = {"L": "local window", "S": "shifted window", "D": "deformable",
               "N": "neighborhood"}
#: Pooling types of :meth:`DAT.forward_head` (``""``: none, the classifier runs per position).
GLOBAL_POOLS = ("avg", "max", "avgmax", "")
#: Parameter-name fragments that never get weight decay (position tables and layer scales);
#: norms and biases are caught by being 1-D.
NO_DECAY_KEYWORDS = ("rpe_table", "relative_position_bias_table", "rpb", "layer_scales")

torch.fx.wrap("pad_bottom_right")
torch.fx.wrap("residual_depthwise_conv")


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
        return super().forward(pad_bottom_right(x, minimum=2))


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
                attn = NeighborhoodAttention2d(dim, heads, nat_ksize, attn_drop, drop)
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
            lpu = self.local_perception_units[d]
            x = residual_depthwise_conv(x, lpu.weight, lpu.bias)
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


def _per_stage(value: Any, name: str) -> list:
    """``value`` as a list with one entry per stage (4); ValueError otherwise."""
    values = list(value)
    if len(values) != 4:
        raise ValueError(f"{name} needs one value per stage (4), got {values}")
    return values


def take_indices(num_stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """Absolute stage indices for timm's ``indices`` convention (``None``: all, an int ``n``: the
    last ``n``, a sequence: those stages, negative from the end), validated like timm's
    ``feature_take_indices``."""
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices} asks for the last {indices} stages, but the model "
                             f"has {num_stages}; use 1..{num_stages}")
        return list(range(num_stages - indices, num_stages))
    taken = []
    for i in indices:
        if not -num_stages <= i < num_stages:
            raise ValueError(f"stage index {i} is out of range: the model has {num_stages} stages "
                             f"(indices 0..{num_stages - 1}, or negative from the end)")
        taken.append(i % num_stages)
    if not taken:
        raise ValueError("indices is empty; pass the stages to return, e.g. [0, 1, 2, 3]")
    return taken


_BLOCK = re.compile(r"^stages\.(\d+)\.(attns|mlps|local_perception_units|layer_norms|layer_scales)"
                    r"\.(\d+)\.")
_DOWN = re.compile(r"^down_projs\.(\d+)\.")
_HEAD_PREFIXES = ("cls_norm.", "cls_head.", "norms.")
_STAGE = re.compile(r"^(stages|down_projs)\.(\d+)\.")


def dat_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer of a DAT parameter for layer-wise LR decay (the model's single source of truth).

    The stem (``patch_proj``) is layer 0, block ``j`` of stage ``i`` is layer
    ``1 + sum(depths[:i]) + j`` (its attention, MLP, both norms, layer scales and local perception
    unit), a down-projection belongs to the first block of the stage it feeds, and the final norm,
    classifier and feature norms are the last layer, ``sum(depths) + 1``.

    Args:
        name: parameter name relative to the DAT module (e.g. ``"stages.2.attns.1.proj_q.weight"``).
        depths: blocks per stage of the model.

    Raises:
        ValueError: for a name outside the DAT layout.
    """
    if name.startswith("patch_proj."):
        return 0
    if match := _BLOCK.match(name):
        stage, kind, index = int(match[1]), match[2], int(match[3])
        block = index // 2 if kind in ("layer_norms", "layer_scales") else index
        return 1 + sum(depths[:stage]) + block
    if match := _DOWN.match(name):
        return 1 + sum(depths[:int(match[1]) + 1])
    if name.startswith(_HEAD_PREFIXES):
        return sum(depths) + 1
    raise ValueError(f"parameter {name!r} is not part of the DAT layout (patch_proj, stages, "
                     f"down_projs, cls_norm, cls_head, norms); update dat_layer_id for it")


class _ParamLayout:
    """The parameter layout shared by :class:`DAT` and :class:`DATFeatures` (needs ``stages``)."""

    stages: nn.ModuleList

    @property
    def depths(self) -> list[int]:
        """Blocks per (kept) stage."""
        return [stage.depth for stage in self.stages]

    def num_layers(self) -> int:
        """Layers of :meth:`param_layer`: the stem, every block, and the output norms/head."""
        return sum(self.depths) + 2

    def param_layer(self, name: str) -> int:
        """Layer of parameter ``name`` (a key of ``named_parameters()``), see :func:`dat_layer_id`."""
        return dat_layer_id(name, self.depths)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """timm's layer grouping (used by ``create_optimizer_v2(..., layer_decay=...)``): a function
        of the parameter name, :meth:`param_layer` (or, ``coarse``, the stage: stem 0, stage ``i``
        ``i + 1`` with the down-projection that feeds it, head last)."""
        if not coarse:
            return self.param_layer

        def stage_of(name: str) -> int:
            if name.startswith("patch_proj."):
                return 0
            if match := _STAGE.match(name):
                return int(match[2]) + 1 + (match[1] == "down_projs")
            return len(self.stages) + 1

        return stage_of

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides 1-D ones (:data:`NO_DECAY_KEYWORDS`:
        position tables and layer scales)."""
        return {n for n, _ in self.named_parameters() if any(k in n for k in NO_DECAY_KEYWORDS)}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """Name fragments of :meth:`no_weight_decay`."""
        return set(NO_DECAY_KEYWORDS)


class DAT(_ParamLayout, nn.Module):
    """Vision Transformer with Deformable Attention (DAT v1 and DAT++).

    Args:
        img_size: input size (side or ``(height, width)``) the model is built for; sizes position
            tables and stored masks. Any input size works at run time.
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
        global_pool: pooling of :meth:`forward_head`, one of :data:`GLOBAL_POOLS`.
        recompute_attention: recompute the deformable and neighborhood attention in backward
            instead of storing it (less training memory, a little more time; see
            :func:`~dat_lightning.models.layers.set_attention_recompute`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
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
        recompute_attention: bool = False,
    ) -> None:
        super().__init__()
        if generation not in ("v1", "pp"):
            raise ValueError(f"generation must be 'v1' (DAT) or 'pp' (DAT++), got {generation!r}")
        if generation == "v1" and (use_conv_patches or any(use_dwc_mlps)):
            raise ValueError("use_conv_patches and use_dwc_mlps are DAT++ features; set "
                             "generation='pp' to use them")
        _check_pool(global_pool)
        dims, depths = _per_stage(dims, "dims"), _per_stage(depths, "depths")
        heads, stage_spec = _per_stage(heads, "heads"), _per_stage(stage_spec, "stage_spec")
        for i, (spec, depth) in enumerate(zip(stage_spec, depths)):
            if len(spec) != depth:
                raise ValueError(f"stage {i}: stage_spec {list(spec)} has {len(spec)} entries but "
                                 f"depths[{i}] = {depth}")
        self.generation = generation
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

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

        fmap = tuple(s // patch_size for s in to_2tuple(img_size))
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i in range(4):
            self.stages.append(DATStage(
                dims[i], depths[i], stage_spec[i], fmap, heads[i], generation,
                window_size=window_sizes[i], groups=_per_stage(groups, "groups")[i],
                use_pe=_per_stage(use_pes, "use_pes")[i],
                stride=_per_stage(strides, "strides")[i],
                offset_range_factor=_per_stage(offset_range_factor, "offset_range_factor")[i],
                ksize=_per_stage(ksizes, "ksizes")[i],
                nat_ksize=_per_stage(nat_ksizes, "nat_ksizes")[i],
                use_dwc_mlp=_per_stage(use_dwc_mlps, "use_dwc_mlps")[i],
                use_lpu=_per_stage(use_lpus, "use_lpus")[i],
                layer_scale_value=_per_stage(layer_scale_values, "layer_scale_values")[i],
                expansion=expansion, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
            ))
            self.feature_info.append(
                dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"stages.{i}"))
            fmap = (fmap[0] // 2, fmap[1] // 2)

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
        if recompute_attention:
            set_attention_recompute(self)

    # --- timm model protocol -------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass to save activation memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.cls_head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs."""
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.cls_head = (nn.Linear(self.num_features, num_classes) if num_classes > 0
                         else nn.Identity())

    def deformable_blocks(self) -> list[tuple[str, DeformableAttention]]:
        """``(name, module)`` of every deformable attention block, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, DeformableAttention)]

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (timm's protocol); ``prune_norm`` also
        drops the final norm, ``prune_head`` the classifier and pooling. Returns the indices."""
        taken = take_indices(len(self.stages), indices)
        last = max(taken)
        self.stages = self.stages[:last + 1]
        self.down_projs = self.down_projs[:last]
        if prune_norm:
            self.cls_norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken

    # --- forward -------------------------------------------------------------------------------
    def _stage_outputs(self, x: torch.Tensor, last: int | None = None):
        """Yield ``(i, map)`` for stages ``0..last`` (before down-sampling) from an image batch."""
        last = len(self.stages) - 1 if last is None else last
        yield from iter_stage_outputs(self.patch_proj(x), self.stages, self.down_projs, last,
                                      self.grad_checkpointing)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (before down-sampling), timm's ``forward_intermediates`` protocol.

        ``indices``: stage indices (negative from the end), or an int ``n`` for the last ``n``
        stages; out-of-range indices raise ValueError. ``norm`` applies the final norm to the last
        stage's map when it is returned. Returns ``(final features, maps)`` or, with
        ``intermediates_only``, the maps.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"DAT produces NCHW feature maps, output_fmt={output_fmt!r} given")
        num_stages = len(self.stages)
        take = take_indices(num_stages, indices)
        last_stage = max(take) if (stop_early or intermediates_only) else num_stages - 1
        intermediates = []
        for i, fmap in self._stage_outputs(x, last_stage):
            if i in take:
                last_norm = norm and i == num_stages - 1
                intermediates.append(self.cls_norm(fmap) if last_norm else fmap)
        if intermediates_only:
            return intermediates
        return self.cls_norm(fmap), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last-stage map ``[B, C, H/32, W/32]``."""
        *_, (_, last) = self._stage_outputs(x)
        return self.cls_norm(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (:attr:`global_pool`) and classify; ``pre_logits=True`` returns the pooled
        features. Without pooling (``""``) the classifier runs at every position (NCHW logits)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        elif self.global_pool == "avgmax":
            x = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        if pre_logits:
            return x
        if not self.global_pool:
            return self.cls_head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.cls_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool={global_pool!r} is not supported; choose one of "
                         f"{list(GLOBAL_POOLS)} ('' keeps the feature map)")


class DATFeatures(_ParamLayout, nn.Module):
    """Multi-scale feature maps of a :class:`DAT`, laid out like the official dense-prediction
    backbone (``patch_proj``, ``stages``, ``norms``, ``down_projs``): one output LayerNorm per
    returned map, no classifier. Used by ``timm.create_model(..., features_only=True)``.

    Args:
        model: the DAT to take the stem and stages from.
        out_indices: stages to return (0..3 or negative from the end, strides 4/8/16/32); later
            stages are dropped.
    """

    def __init__(self, model: DAT, out_indices: Sequence[int] = (0, 1, 2, 3), **_: Any) -> None:
        super().__init__()
        self.out_indices = tuple(take_indices(len(model.stages), out_indices))
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
