"""Build DAT / DAT++ models from the constructor settings of the official code.

* :func:`from_official_config`: a classifier from the ``MODEL.DAT`` block of an official
  classification yaml (LeapLabTHU/DAT).
* :func:`from_official_dense_config`: a features backbone from the ``backbone=dict(...)`` of an
  official DAT-Detection (mmdet) or DAT-Segmentation (mmseg) config, so such a config can be
  pasted as is.

The options that have no effect here, and those refused, are listed in
:mod:`dat_lightning.models.official_configs`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .checkpoint import load_checkpoint
from .dat import DAT, DATFeatures
from .official_configs import official_kwargs

__all__ = ["from_official_config", "from_official_dense_config"]


def _build(kwargs: dict) -> DAT:
    unknown = sorted(set(kwargs) - set(inspect.signature(DAT).parameters))
    if unknown:
        raise ValueError(f"unknown DAT option(s) {unknown}: not an option of the official "
                         "constructors nor of dat_lightning.models.DAT; check the spelling")
    return DAT(**kwargs)


def from_official_config(config: dict, generation: str | None = None, **overrides: Any) -> DAT:
    """Build a :class:`DAT` from the official constructor settings; ``overrides`` replace single
    settings (e.g. ``num_classes=10``)."""
    return _build({**official_kwargs(config, generation), **overrides})


def _use_checkpoint(value: Any) -> bool:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len({bool(v) for v in values}) > 1:
        raise ValueError(f"use_checkpoint={value} differs per stage; dat-lightning checkpoints "
                         "every block or none: give one bool")
    return bool(values[0])


def _pretrained(init_cfg: Mapping | None) -> str | None:
    if not init_cfg:
        return None
    if init_cfg.get("type") != "Pretrained" or set(init_cfg) - {"type", "checkpoint"}:
        raise ValueError(f"init_cfg={dict(init_cfg)} is not supported: only "
                         "dict(type='Pretrained', checkpoint=path_or_None) (the official configs' "
                         "form); load other weights with load_checkpoint")
    return init_cfg.get("checkpoint")


def from_official_dense_config(config: Mapping[str, Any], **overrides: Any) -> DATFeatures:
    """Build the features backbone of an official DAT-Detection / DAT-Segmentation config.

    ``config`` is the ``backbone=dict(...)`` of an official mmdet/mmseg config (``type="DAT"``
    may be left in). Load the official detection/segmentation checkpoints into the result with
    :func:`~dat_lightning.models.load_checkpoint` (the ``backbone.`` prefix and the neck/head
    entries are handled there).

    The official dense backbone is built on the DAT++ blocks, so the result always follows the
    DAT++ conventions (``generation="pp"``), also for configs with v1-style L/S/D stages.

    Honoured: every architecture option of the official classification constructor (``dims``,
    ``depths``, ``stage_spec``, ``img_size``, ``drop_path_rate``, ...), and
    ``out_indices`` (the stages returned, each after its ``norms.i`` LayerNorm; the official
    forward also returns the unlisted stages, without norm: with all four listed, as in the
    official fixtures' configs, the outputs are the same), ``use_checkpoint`` (activation
    checkpointing of every block in training),
    ``init_cfg=dict(type="Pretrained", checkpoint=path)`` (loaded strictly with
    :func:`~dat_lightning.models.load_checkpoint`; ``checkpoint=None`` loads nothing).

    Accepted without effect (see
    :data:`~dat_lightning.models.official_configs.NO_EFFECT_OFFICIAL`): ``sr_ratios``,
    ``local_orf``, ``local_kv_sizes`` (only block types that no official config uses),
    ``heads_q``, ``ns_per_pts``, ``ksize_qnas``, ``nqs``, ``qna_activation``, ``offset_pes``,
    ``deform_groups``, ``lower_lr_kvs`` (passed around by the official code, never used), and
    ``num_classes`` (a features backbone has no classifier).

    Refused (``ValueError``): a ``type`` other than ``"DAT"``, block types other than
    ``L``/``S``/``D``/``N``, ``use_cmt_mlps``/``dwc_pes``/``fixed_pes``/``no_offs`` set to
    ``True`` (not implemented; every official config leaves them off), other ``init_cfg`` forms,
    and unknown options.

    Args:
        config: the official backbone settings.
        **overrides: replace single settings (``drop_path_rate=0.1``, ``img_size=512``).
    """
    kwargs = {**config, **overrides}
    kind = kwargs.pop("type", "DAT")
    if kind != "DAT":
        raise ValueError(f"backbone type {kind!r} is not a DAT backbone; expected type='DAT'")
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    use_checkpoint = _use_checkpoint(kwargs.pop("use_checkpoint", False))
    pretrained = _pretrained(kwargs.pop("init_cfg", None))
    kwargs.pop("num_classes", None)
    model = _build({**official_kwargs(kwargs, "pp"), "num_classes": 0})
    features = DATFeatures(model, out_indices=out_indices)
    features.set_grad_checkpointing(use_checkpoint)
    if pretrained is not None:
        load_checkpoint(features, pretrained)
    return features
