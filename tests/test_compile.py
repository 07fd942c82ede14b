"""torch.compile of the backbones: one graph without breaks, and the CompileBackbone callback with
dynamic shapes (no recompilation when the batch or image size changes)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_dat_kwargs

from dat_lightning.callbacks.compile import CompileBackbone
from dat_lightning.models import DAT


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_backbone_compiles_to_one_graph_in_training(generation, one_thread):
    """Forward in train mode with gradients: every block type (L, S, D, N) and the recomputing
    position bias trace into a single graph."""
    model = DAT(**tiny_dat_kwargs(generation)).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_callback_errors():
    task = torch.nn.Module()
    task.head = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="found no DAT backbone in Module; name the submodule"):
        CompileBackbone().on_fit_start(None, task)
    with pytest.raises(ValueError, match="has no such submodule"):
        CompileBackbone(module="backbone").on_fit_start(None, task)
