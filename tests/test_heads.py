"""Decode heads on DAT feature maps: output shapes for odd input sizes, gradients, the aux head."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import tiny_dat_kwargs

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)
from dat_lightning.models.heads import FCNHead, SemanticFPNHead, UperNetHead


@pytest.fixture(scope="module")
def features_of():
    """Function: input size -> the four tiny-DAT feature maps of a 2-image batch, and the channels."""
    kwargs = {k: v for k, v in tiny_dat_kwargs("v1").items() if k != "num_classes"}
    backbone = timm.create_model("dat_tiny", features_only=True, out_indices=(0, 1, 2, 3), **kwargs).eval()

    def run(height: int, width: int) -> tuple[list[torch.Tensor], list[int]]:
        with torch.no_grad():
            return backbone(torch.randn(2, 3, height, width)), backbone.feature_info.channels()

    return run


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (37, 90)])
@pytest.mark.parametrize("head_cls", [UperNetHead, SemanticFPNHead])
def test_head_logits_at_finest_map(features_of, head_cls, size: tuple[int, int]) -> None:
    features, channels = features_of(*size)
    head = head_cls(channels, num_classes=5, channels=16)
    logits = head(features)
    assert logits.shape == (2, 5, *features[0].shape[-2:])
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_semantic_fpn_upsampling_chain(features_of) -> None:
    features, channels = features_of(40, 72)
    head = SemanticFPNHead(channels, num_classes=3, channels=8, fpn_channels=12)
    # level i has max(i, 1) conv blocks, one per 2x step down to the finest level
    assert [len(convs) for convs in head.scale_heads] == [1, 1, 2, 3]
    assert head.fpn.inner_blocks[0][0].out_channels == 12
    assert head(features).shape == (2, 3, 10, 18)


def test_upernet_uses_every_level(features_of) -> None:
    features, channels = features_of(64, 64)
    head = UperNetHead(channels, num_classes=4, channels=16).eval()
    reference = head(features)
    for i in range(len(features)):
        changed = [f + 1.0 if j == i else f for j, f in enumerate(features)]
        assert not torch.allclose(head(changed), reference), f"level {i} does not reach the logits"


def test_fcn_head_keeps_resolution(features_of) -> None:
    features, channels = features_of(33, 47)
    head = FCNHead(channels[2], num_classes=6, channels=8)
    assert head(features[2]).shape == (2, 6, *features[2].shape[-2:])
