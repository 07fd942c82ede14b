"""The DAT / DAT++ presets, registered with timm, and :func:`create_backbone`.

The eight official presets are built from the official constructor settings
(:data:`~dat_lightning.models.official_configs.OFFICIAL_CONFIGS`); two narrow presets,
``dat_test`` and ``dat_pp_test`` (as timm has ``test_vit``), run in seconds on a CPU and serve
the tests, notebooks, benchmarks and the digits recipe. ``timm.create_model("dat_tiny")`` works once
``dat_lightning`` is imported.

Every way of loading weights goes through :func:`~dat_lightning.models.checkpoint.load_checkpoint`
(position-table resizing, timm-style ``in_chans`` adaptation of the first conv, classifier reset,
load report): ``create_backbone(name, weights)``, ``timm.create_model(name, pretrained=True)``
(the registered download, ``pretrained_cfg_overlay=dict(file=...)`` or a ``local-dir:`` folder) and
the tasks' ``weights=``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint import load_checkpoint
from .dat import DAT, DATFeatures
from .official_configs import OFFICIAL_CONFIGS, official_kwargs
from .weights import WEIGHTS, download_file

__all__ = ["PRESETS", "TEST_CONFIGS", "check_model_name", "create_backbone"]

#: Constructor settings of the narrow test presets: DAT (v1) with local, shifted and deformable
#: blocks, and DAT++ with neighborhood and deformable blocks, 16-128 channels, built for 32 px.
TEST_CONFIGS: dict[str, dict] = {
    "dat_test": dict(
        generation="v1", img_size=32, dim_stem=16, dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
        heads=[1, 2, 4, 8], stage_spec=[["L", "S"], ["L", "D"], ["L", "D"], ["L", "D"]],
        window_sizes=[4, 4, 2, 1], groups=[-1, 1, 2, 4], use_pes=[False, True, True, True],
        strides=[-1, 1, 1, 1], offset_range_factor=[-1, -1, 2, 2]),
    "dat_pp_test": dict(
        generation="pp", img_size=32, dim_stem=16, dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
        heads=[1, 2, 4, 8], stage_spec=[["N", "D"], ["N", "D"], ["N", "D"], ["D", "D"]],
        groups=[1, 1, 2, 4], use_pes=[True] * 4, strides=[4, 2, 1, 1], offset_range_factor=[-1] * 4,
        use_dwc_mlps=[True] * 4, use_lpus=[True] * 4, use_conv_patches=True, ksizes=[5, 3, 3, 3],
        nat_ksizes=[3, 3, 3, 3]),
}
_SETTINGS = {**{name: official_kwargs(cfg) for name, cfg in OFFICIAL_CONFIGS.items()}, **TEST_CONFIGS}
#: Names of the registered presets.
PRESETS = tuple(_SETTINGS)

_COMMON_CFG = dict(first_conv="patch_proj.0", classifier="cls_head", license="apache-2.0",
                   origin_url="https://github.com/LeapLabTHU/DAT", crop_mode="center",
                   fixed_input_size=False)


def _pretrained_cfg(variant: str) -> dict:
    weights = WEIGHTS[f"{variant}.in1k"]
    size = weights.input_size[-1]
    return dict(
        _COMMON_CFG, url=weights.url, num_classes=1000, input_size=weights.input_size,
        pool_size=(size // 32, size // 32), crop_pct=weights.crop_pct,
        interpolation=weights.interpolation, mean=weights.mean, std=weights.std,
        notes=(f"file {weights.file_name}", f"ImageNet-1K top-1 {weights.top1}",
               f"mirror {weights.mirror}"),
    )


def _test_cfg() -> dict:
    return dict(_COMMON_CFG, num_classes=1000, input_size=(3, 32, 32), pool_size=(1, 1),
                crop_pct=1.0, interpolation="bicubic", notes=("narrow test preset, no weights",))


default_cfgs = generate_default_cfgs({
    **{name: _pretrained_cfg(name.split(".")[0]) for name in WEIGHTS},
    **{name: _test_cfg() for name in TEST_CONFIGS},
})


def _pretrained_source(cfg: dict) -> str | Path:
    """The checkpoint a timm ``pretrained_cfg`` points at: its ``file`` (a ``local-dir:`` folder
    means its ``model.safetensors``), else its ``url`` (downloaded once into the hub cache under the
    registered file name or the URL's)."""
    if cfg.get("file"):
        path = Path(cfg["file"])
        if path.is_dir():
            found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin; "
                                        "export the model there with dat_lightning.export.save_for_timm")
            return found[0]
        return path
    name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    if name in WEIGHTS and cfg.get("url") == WEIGHTS[name].url:
        return name
    if cfg.get("url"):
        return download_file(cfg["url"], Path(urlsplit(cfg["url"]).path).name or f"{name}.pth")
    raise ValueError(f"{name} has no registered weights (its pretrained_cfg has neither 'file' nor "
                     "'url'); pass pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')")


def _create_dat(variant: str, pretrained: bool = False, **kwargs: Any) -> DAT | DATFeatures:
    """Build a preset (features wrapper included); pretrained weights go through
    :func:`~dat_lightning.models.checkpoint.load_checkpoint`."""
    model = build_model_with_cfg(
        DAT, variant, pretrained=False,
        feature_cfg=dict(feature_cls=DATFeatures, out_indices=(0, 1, 2, 3)),
        **{**_SETTINGS[variant], **kwargs},
    )
    if pretrained:
        load_checkpoint(model, _pretrained_source(model.pretrained_cfg))
    return model


@register_model
def dat_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-T (weights ``dat_tiny.in1k``)."""
    return _create_dat("dat_tiny", pretrained, **kwargs)


@register_model
def dat_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-S (weights ``dat_small.in1k``)."""
    return _create_dat("dat_small", pretrained, **kwargs)


@register_model
def dat_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B (weights ``dat_base.in1k``)."""
    return _create_dat("dat_base", pretrained, **kwargs)


@register_model
def dat_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B built for 384 px (weights ``dat_base_384.in1k``)."""
    return _create_dat("dat_base_384", pretrained, **kwargs)


@register_model
def dat_pp_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-T++ (weights ``dat_pp_tiny.in1k``)."""
    return _create_dat("dat_pp_tiny", pretrained, **kwargs)


@register_model
def dat_pp_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-S++ (weights ``dat_pp_small.in1k``)."""
    return _create_dat("dat_pp_small", pretrained, **kwargs)


@register_model
def dat_pp_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B++ (weights ``dat_pp_base.in1k``)."""
    return _create_dat("dat_pp_base", pretrained, **kwargs)


@register_model
def dat_pp_base_384(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """DAT-B++ for 384 px data (weights ``dat_pp_base_384.in1k``; built at img_size 224 like the
    official config)."""
    return _create_dat("dat_pp_base_384", pretrained, **kwargs)


@register_model
def dat_test(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Narrow DAT (v1) for tests and CPU demos (no weights)."""
    return _create_dat("dat_test", pretrained, **kwargs)


@register_model
def dat_pp_test(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Narrow DAT++ for tests and CPU demos (no weights)."""
    return _create_dat("dat_pp_test", pretrained, **kwargs)


def check_model_name(name: str) -> None:
    """Raise a ValueError naming the DAT presets and the closest match when timm does not know
    ``name`` (a ``local-dir:``/``hf-hub:`` source is left to timm)."""
    if ":" in name or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, PRESETS, n=1) or difflib.get_close_matches(
        name, timm.list_models(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown backbone {name!r}; the DAT presets are {list(PRESETS)}; {hint}(any "
                     "other timm model name works where a DAT is not required)")


def create_backbone(name: str, weights: str | None = None, *, features_only: bool = False,
                    out_indices: tuple[int, ...] = (0, 1, 2, 3), num_classes: int = 0,
                    allow_pickle: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered DAT preset with timm and load ``weights`` into it.

    Args:
        name: timm model name (``"dat_tiny"``, ``"dat_pp_small"``, ``"dat_test"``, ...) or a
            ``local-dir:/path`` folder saved by :func:`dat_lightning.export.save_for_timm` (its
            weights are loaded; ``num_classes`` then defaults to the saved head).
        weights: a checkpoint path or a registered weight name (``"dat_tiny.in1k"``); None keeps
            the random initialisation. Loaded with :func:`load_checkpoint` (strict; the report is
            logged).
        features_only: return a :class:`DATFeatures` (list of stage maps) instead of a classifier.
        out_indices: stages returned when ``features_only``.
        num_classes: classifier outputs (0: no classifier, :meth:`DAT.forward` gives pooled
            features); ignored when ``features_only``.
        allow_pickle: fully unpickle ``weights`` (trusted files only, see :func:`load_checkpoint`).
        **kwargs: override preset settings (``drop_path_rate``, ``img_size``, or a whole config).

    Raises:
        ValueError: for an unknown model name (the message lists the presets).
    """
    check_model_name(name)
    if features_only:
        kwargs.update(features_only=True, out_indices=out_indices)
    if name.startswith("local-dir:"):  # the saved weights and head, unless num_classes is given
        model = timm.create_model(name, pretrained=True, num_classes=num_classes or None, **kwargs)
    else:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_checkpoint(model, weights, allow_pickle=allow_pickle)
    return model
