"""Constructor settings of the eight official DAT / DAT++ configs, and their translation to
:class:`~dat_lightning.models.dat.DAT` arguments.

Each :data:`OFFICIAL_CONFIGS` entry is the ``MODEL.DAT`` block of the official yaml config, i.e. the
keyword arguments the official code passes to its ``DAT(...)`` constructor (recorded in the
official state-dict manifests; DAT v1 from the CVPR 2022 release, DAT++ from the current official
repository). The official DAT++ 384 config builds the model at ``img_size=224``: only its data is
384. :func:`official_kwargs` maps such settings (or the ``backbone=dict(...)`` of an official
DAT-Detection / DAT-Segmentation config, see :mod:`dat_lightning.models.official`) to this
implementation, and explains every option it does not use.
"""

from __future__ import annotations

OFFICIAL_CONFIGS: dict[str, dict] = {
    "dat_tiny": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=96,
        dims=[96, 192, 384, 768],
        depths=[2, 2, 6, 2],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D", "L", "D", "L", "D"], ["L", "D"]],
        heads=[3, 6, 12, 24],
        window_sizes=[7, 7, 7, 7],
        groups=[-1, -1, 3, 6],
        use_pes=[False, False, True, True],
        dwc_pes=[False, False, False, False],
        strides=[-1, -1, 1, 1],
        sr_ratios=[-1, -1, -1, -1],
        offset_range_factor=[-1, -1, 2, 2],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[False, False, False, False],
        use_conv_patches=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
    ),
    "dat_small": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=96,
        dims=[96, 192, 384, 768],
        depths=[2, 2, 18, 2],
        stage_spec=[
            ["L", "S"],
            ["L", "S"],
            ["L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D"],
            ["L", "D"],
        ],
        heads=[3, 6, 12, 24],
        window_sizes=[7, 7, 7, 7],
        groups=[-1, -1, 3, 6],
        use_pes=[False, False, True, True],
        dwc_pes=[False, False, False, False],
        strides=[-1, -1, 1, 1],
        sr_ratios=[-1, -1, -1, -1],
        offset_range_factor=[-1, -1, 2, 2],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[False, False, False, False],
        use_conv_patches=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
    ),
    "dat_base": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=128,
        dims=[128, 256, 512, 1024],
        depths=[2, 2, 18, 2],
        stage_spec=[
            ["L", "S"],
            ["L", "S"],
            ["L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D"],
            ["L", "D"],
        ],
        heads=[4, 8, 16, 32],
        window_sizes=[7, 7, 7, 7],
        groups=[-1, -1, 4, 8],
        use_pes=[False, False, True, True],
        dwc_pes=[False, False, False, False],
        strides=[-1, -1, 1, 1],
        sr_ratios=[-1, -1, -1, -1],
        offset_range_factor=[-1, -1, 2, 2],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[False, False, False, False],
        use_conv_patches=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.5,
    ),
    "dat_base_384": dict(
        img_size=384,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=128,
        dims=[128, 256, 512, 1024],
        depths=[2, 2, 18, 2],
        stage_spec=[
            ["L", "S"],
            ["L", "S"],
            ["L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D", "L", "D"],
            ["L", "D"],
        ],
        heads=[4, 8, 16, 32],
        window_sizes=[12, 12, 12, 12],
        groups=[-1, -1, 4, 8],
        use_pes=[False, False, True, True],
        dwc_pes=[False, False, False, False],
        strides=[-1, -1, 1, 1],
        sr_ratios=[-1, -1, -1, -1],
        offset_range_factor=[-1, -1, 2, 2],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[False, False, False, False],
        use_conv_patches=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.5,
    ),
    "dat_pp_tiny": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=64,
        dims=[64, 128, 256, 512],
        depths=[2, 4, 18, 2],
        stage_spec=[
            ["N", "D"],
            ["N", "D", "N", "D"],
            ["N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D"],
            ["D", "D"],
        ],
        heads=[2, 4, 8, 16],
        window_sizes=[7, 7, 7, 7],
        groups=[1, 2, 4, 8],
        use_pes=[True, True, True, True],
        dwc_pes=[False, False, False, False],
        strides=[8, 4, 2, 1],
        offset_range_factor=[-1, -1, -1, -1],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[True, True, True, True],
        use_lpus=[True, True, True, True],
        use_conv_patches=True,
        ksizes=[9, 7, 5, 3],
        nat_ksizes=[7, 7, 7, 7],
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
    ),
    "dat_pp_small": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=96,
        dims=[96, 192, 384, 768],
        depths=[2, 4, 18, 2],
        stage_spec=[
            ["N", "D"],
            ["N", "D", "N", "D"],
            ["N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D"],
            ["D", "D"],
        ],
        heads=[3, 6, 12, 24],
        window_sizes=[7, 7, 7, 7],
        groups=[1, 2, 3, 6],
        use_pes=[True, True, True, True],
        dwc_pes=[False, False, False, False],
        strides=[8, 4, 2, 1],
        offset_range_factor=[-1, -1, -1, -1],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[True, True, True, True],
        use_lpus=[True, True, True, True],
        use_conv_patches=True,
        ksizes=[9, 7, 5, 3],
        nat_ksizes=[7, 7, 7, 7],
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.4,
    ),
    "dat_pp_base": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=128,
        dims=[128, 256, 512, 1024],
        depths=[2, 4, 18, 2],
        stage_spec=[
            ["N", "D"],
            ["N", "D", "N", "D"],
            ["N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D"],
            ["D", "D"],
        ],
        heads=[4, 8, 16, 32],
        window_sizes=[7, 7, 7, 7],
        groups=[2, 4, 8, 16],
        use_pes=[True, True, True, True],
        dwc_pes=[False, False, False, False],
        strides=[8, 4, 2, 1],
        offset_range_factor=[-1, -1, -1, -1],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[True, True, True, True],
        use_lpus=[True, True, True, True],
        use_conv_patches=True,
        ksizes=[9, 7, 5, 3],
        nat_ksizes=[7, 7, 7, 7],
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.7,
    ),
    "dat_pp_base_384": dict(
        img_size=224,
        patch_size=4,
        num_classes=1000,
        expansion=4,
        dim_stem=128,
        dims=[128, 256, 512, 1024],
        depths=[2, 4, 18, 2],
        stage_spec=[
            ["N", "D"],
            ["N", "D", "N", "D"],
            ["N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D", "N", "D"],
            ["D", "D"],
        ],
        heads=[4, 8, 16, 32],
        window_sizes=[7, 7, 7, 7],
        groups=[2, 4, 8, 16],
        use_pes=[True, True, True, True],
        dwc_pes=[False, False, False, False],
        strides=[8, 4, 2, 1],
        offset_range_factor=[-1, -1, -1, -1],
        no_offs=[False, False, False, False],
        fixed_pes=[False, False, False, False],
        use_dwc_mlps=[True, True, True, True],
        use_lpus=[True, True, True, True],
        use_conv_patches=True,
        ksizes=[9, 7, 5, 3],
        nat_ksizes=[7, 7, 7, 7],
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.6,
    ),
}


# Official options that this implementation does not support, and the value every official
# config uses for them: another value is refused.
UNSUPPORTED_OFFICIAL: dict[str, bool] = {"dwc_pes": False, "fixed_pes": False, "no_offs": False,
                                         "log_cpb": False, "use_cmt_mlps": False}

# Official options without effect on the block types of this implementation (L, S, D, N): they
# are accepted and dropped. Reason per option, for the documentation and the builders.
NO_EFFECT_OFFICIAL: dict[str, str] = {
    "sr_ratios": "used only by spatial-reduction ('P') blocks",
    "local_orf": "used only by 'A' blocks",
    "local_kv_sizes": "used only by 'A' blocks",
    "heads_q": "passed to the blocks, never used by L/S/D/N blocks",
    "ns_per_pts": "passed to the blocks, never used by L/S/D/N blocks",
    "ksize_qnas": "passed to the blocks, never used by L/S/D/N blocks",
    "nqs": "passed to the blocks, never used by L/S/D/N blocks",
    "qna_activation": "passed to the blocks, never used by L/S/D/N blocks",
    "offset_pes": "accepted by the official dense backbone, never used by any block",
    "deform_groups": "accepted by the official dense backbone, never used by any block",
    "lower_lr_kvs": "a learning-rate setting of the official optimizer, not of the model",
}

# Options of the official dense-prediction backbone only, handled by
# dat_lightning.models.official.from_official_dense_config.
DENSE_ONLY_OFFICIAL = ("out_indices", "use_checkpoint", "init_cfg")


def official_kwargs(config: dict, generation: str | None = None) -> dict:
    """Translate official constructor settings (the ``MODEL.DAT`` yaml block) to
    :class:`~dat_lightning.models.dat.DAT` arguments.

    ``generation`` is inferred when not given: DAT++ configs carry ``use_lpus``/``nat_ksizes`` or
    ``N`` blocks (the dense-prediction code is DAT++ code, so its configs always do). Options in
    :data:`NO_EFFECT_OFFICIAL` are dropped; a value other than the official one of an option in
    :data:`UNSUPPORTED_OFFICIAL`, and the dense-only options, raise ``ValueError``.
    """
    kwargs = dict(config)
    dense = [key for key in DENSE_ONLY_OFFICIAL if key in kwargs]
    if dense:
        raise ValueError(f"{dense} are options of the official dense-prediction backbone; build "
                         "it with dat_lightning.models.from_official_dense_config(config)")
    if generation is None:
        is_pp = ("use_lpus" in kwargs or "nat_ksizes" in kwargs
                 or any("N" in s for s in kwargs.get("stage_spec", [])))
        generation = "pp" if is_pp else "v1"
    for key, supported in UNSUPPORTED_OFFICIAL.items():
        values = kwargs.pop(key, None)
        if values is not None and any(v != supported for v in values):
            raise ValueError(f"official option {key}={values} is not supported by dat-lightning "
                             f"(every official config uses {supported}); remove it from the config")
    for key in NO_EFFECT_OFFICIAL:
        kwargs.pop(key, None)
    return dict(kwargs, generation=generation)
