"""torch.compile of the backbones: one graph without breaks, and the CompileBackbone callback with
dynamic shapes (no recompilation when the batch or image size changes)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_dat_kwargs
from functorch.compile import make_boxed_func
from lightning.pytorch import Trainer, seed_everything
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounter
from toy_data import NUM_CLASSES, toy_loader

from dat_lightning.callbacks.compile import CompileBackbone
from dat_lightning.models import DAT
from dat_lightning.tasks import ClassificationTask


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("recompute_attention", [False, True], ids=["stored", "recomputed"])
@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_backbone_compiles_to_one_graph_in_training(generation, recompute_attention, one_thread):
    """Forward in train mode with gradients: every block type (L, S, D, N), the recomputing
    position bias and MLP, and the attention recomputation option trace into a single graph."""
    model = DAT(**tiny_dat_kwargs(generation), recompute_attention=recompute_attention).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_bias_sampling_keeps_the_aten_kernel(one_thread):
    """While compiling, the deformable position bias is sampled by an opaque op that calls aten's
    ``grid_sampler_2d`` (inductor's decomposition of it is several times slower on the CPU): it is
    in the traced graph, and the compiled outputs and gradients equal eager ones."""
    torch.manual_seed(0)
    model = DAT(**tiny_dat_kwargs("v1")).train()
    x = torch.randn(2, 3, 32, 32)
    targets = set()

    def record(graph_module, example_inputs):  # the aten-level graphs inductor would lower
        targets.update(node.target for node in graph_module.graph.nodes)
        return make_boxed_func(graph_module.forward)

    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert torch.ops.dat_lightning.sample_bias_table.default in targets
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_compile_callback_does_not_recompile_for_new_batch_or_image_sizes(one_thread):
    """DAT (v1) blocks, dynamic shapes. Fitting (batches of 3 and a last one of 2, validation in
    eval mode) compiles at most two graphs (the first is specialised to its batch size, the change
    makes dynamo's graph symbolic); the first larger image size adds one (a 32 px input reaches
    stage 4 at 1 px, which the down-sampling pads: a guard on that size). After that, new batch
    sizes and new image sizes reuse the graphs. DAT++'s neighborhood blocks recompile per number
    of attention tiles, and batch size 1 is specialised by torch (not tested)."""
    seed_everything(0)
    task = ClassificationTask(num_classes=NUM_CLASSES, backbone="dat_tiny",
                              backbone_kwargs=tiny_dat_kwargs("v1", NUM_CLASSES))
    names = list(task.state_dict())
    counter = CompileCounter()
    callback = CompileBackbone(backend=counter)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, max_epochs=1,
                      callbacks=[callback], limit_val_batches=1)
    trainer.fit(task, toy_loader(8, batch_size=3), toy_loader(4, seed=1))
    assert callback.compiled == ["model"]
    assert list(task.state_dict()) == names  # compiled in place: checkpoint keys unchanged
    after_fit = counter.frame_count
    assert 1 <= after_fit <= 2
    task.train()
    for shape in ((5, 3, 32, 32), (2, 3, 64, 96), (3, 3, 96, 128), (4, 3, 64, 160)):
        task(torch.randn(shape)).sum().backward()
        assert counter.frame_count == after_fit + (shape[2] != 32), shape


def test_compile_callback_errors():
    task = torch.nn.Module()
    task.head = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="found no DAT backbone in Module; name the submodule"):
        CompileBackbone().on_fit_start(None, task)
    with pytest.raises(ValueError, match="has no such submodule"):
        CompileBackbone(module="backbone").on_fit_start(None, task)
