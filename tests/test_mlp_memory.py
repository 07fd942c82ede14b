"""The MLP tail that recomputes its activation in backward (``activation_linear``): the same
values and gradients as the plain layers, under autocast too, while saving only the hidden
tokens, and holding few hidden-sized maps at once in backward (measured with
``peak_allocated_bytes``, tested here too); and DAT++'s residual depthwise convolution
(``residual_depthwise_conv``), which folds the residual into the kernel in full precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dat_lightning.memory import peak_allocated_bytes
from dat_lightning.models.layers import ConvMLP, TransformerMLP
from dat_lightning.models.layers.conv import fuses_residual, residual_depthwise_conv
from dat_lightning.models.layers.mlp import activation_linear


def plain_tail(h, weight, bias, dwc_weight=None, dwc_bias=None):
    """The textbook form: every intermediate kept by autograd."""
    if dwc_weight is None:
        return F.linear(F.gelu(h), weight, bias)
    x = h.permute(0, 3, 1, 2)
    x = F.gelu(x + F.conv2d(x, dwc_weight, dwc_bias, padding=1, groups=x.shape[1]))
    return F.linear(x.permute(0, 2, 3, 1), weight, bias)


def tail_inputs(dtype, with_dwc):
    torch.manual_seed(0)
    h = torch.randn(1, 4, 5, 6, dtype=dtype, requires_grad=True)
    weight = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    bias = torch.randn(3, dtype=dtype, requires_grad=True)
    dwc = (torch.randn(6, 1, 3, 3, dtype=dtype, requires_grad=True),
           torch.randn(6, dtype=dtype, requires_grad=True)) if with_dwc else ()
    return (h, weight, bias, *dwc)


@pytest.mark.parametrize("with_dwc", [False, True], ids=["gelu", "dwc-gelu"])
def test_activation_linear_gradcheck(with_dwc):
    assert torch.autograd.gradcheck(activation_linear, tail_inputs(torch.float64, with_dwc))


@pytest.mark.parametrize("with_dwc", [False, True], ids=["gelu", "dwc-gelu"])
def test_activation_linear_double_backward(with_dwc):
    """``create_graph=True`` (gradient penalties) differentiates the backward itself, so the
    in-place buffer reuse of the first-order backward must not run there."""
    assert torch.autograd.gradgradcheck(activation_linear, tail_inputs(torch.float64, with_dwc))


def hidden_saves(tail, inputs) -> int:
    """Distinct storages of the hidden tokens' size that ``tail`` saves for backward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        tail(*inputs)
    params = {t.data_ptr() for t in inputs[1:]}
    return len({t.data_ptr() for t in saved
                if t.data_ptr() not in params and t.numel() == inputs[0].numel()})


@pytest.mark.parametrize("with_dwc", [False, True], ids=["gelu", "dwc-gelu"])
def test_activation_linear_saves_only_hidden_tokens(with_dwc):
    inputs = tail_inputs(torch.float32, with_dwc)
    assert hidden_saves(activation_linear, inputs) == 1
    assert hidden_saves(plain_tail, inputs) == 2 + with_dwc  # input and output of GELU (+ sum)


def test_peak_allocated_bytes_counts_tensors_alive_at_once():
    mib = 2**20 // 4  # float32 elements

    def two_at_once():
        a, b = torch.ones(mib), torch.ones(mib)
        return a, b

    def one_after_another():
        torch.ones(mib)
        torch.ones(mib)

    assert 2 * 2**20 <= peak_allocated_bytes(two_at_once) < 2.1 * 2**20
    assert 2**20 <= peak_allocated_bytes(one_after_another) < 1.1 * 2**20


def backward_peak_in_hidden_maps(inputs) -> float:
    """Peak allocator bytes during the tail's backward, in units of the hidden tokens' size."""
    out = activation_linear(*inputs)
    grad = torch.ones_like(out)
    return peak_allocated_bytes(lambda: out.backward(grad)) / inputs[0].nbytes


@pytest.mark.parametrize("with_dwc", [False, True], ids=["gelu", "dwc-gelu"])
def test_activation_linear_backward_frees_hidden_maps_early(with_dwc):
    """The backward holds one hidden-sized map besides ``h`` (the activation for the weight
    gradient, whose buffer then takes the gradient, which the GELU backward overwrites), two with
    the dwc (its pre-activation too): this sets the peak of checkpointed training. Keeping every
    intermediate to the end would hold three (four with the dwc)."""
    torch.manual_seed(0)
    h = torch.randn(2, 16, 16, 64, requires_grad=True)  # 128 KiB, the weights are 2 KiB
    tail = (h, torch.randn(8, 64, requires_grad=True), torch.randn(8, requires_grad=True))
    if with_dwc:
        tail += (torch.randn(64, 1, 3, 3, requires_grad=True), torch.randn(64, requires_grad=True))
    assert backward_peak_in_hidden_maps(tail) < 1.5 + with_dwc


@pytest.mark.parametrize("with_dwc", [False, True], ids=["gelu", "dwc-gelu"])
def test_activation_linear_matches_plain_under_bf16_autocast(with_dwc):
    """The recomputation runs in the hidden tokens' dtype (what autocast chose in forward), so
    the bf16 results and gradients are the plain layers' ones."""
    results = []
    for tail in (activation_linear, plain_tail):
        inputs = tail_inputs(torch.float32, with_dwc)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tail(*inputs)
        out.float().square().sum().backward()
        results.append((out, [t.grad for t in inputs]))
    (out, grads), (ref_out, ref_grads) = results
    assert out.dtype == ref_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("mlp", [TransformerMLP, ConvMLP])
def test_mlps_equal_their_plain_layers(mlp):
    """Module level: output and parameter gradients as computed by the layers themselves."""
    torch.manual_seed(0)
    layer = mlp(8, expansion=2).double()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    if mlp is TransformerMLP:
        c = layer.chunk
        ref = c.linear2(c.act(c.linear1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    else:
        h = layer.linear1(x)
        ref = layer.linear2(layer.act(h + layer.dwc(h)))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(layer.parameters()))
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


class MapSizedAdds(TorchDispatchMode):
    """Counts element-wise adds whose output has ``numel`` elements (the size of the map)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.add, torch.ops.aten.add_) and \
                isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.count += 1
        return out


def residual_inputs(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, dtype=dtype, requires_grad=True)
    weight = torch.randn(6, 1, 3, 3, dtype=dtype, requires_grad=True)
    bias = torch.randn(6, dtype=dtype, requires_grad=True)
    return x, weight, bias


def test_residual_depthwise_conv_folds_the_residual_in_full_precision():
    """``x + dwc(x)`` runs as one convolution with an identity centre tap in fp32/fp64: the same
    values and gradients, and no add over the map in forward or backward."""
    x, weight, bias = residual_inputs(torch.float64)
    assert fuses_residual(x)
    assert torch.autograd.gradcheck(residual_depthwise_conv, (x, weight, bias))
    explicit = x + F.conv2d(x, weight, bias, padding=1, groups=6)
    torch.testing.assert_close(residual_depthwise_conv(x, weight, bias), explicit)
    for fuse, adds in ((True, 0), (False, 2)):  # unfused: the forward sum, the gradient sum
        with MapSizedAdds(x.numel()) as mode:
            torch.autograd.grad(residual_depthwise_conv(x, weight, bias, fuse).sum(),
                                (x, weight, bias))
        assert mode.count == adds


def test_residual_depthwise_conv_keeps_the_sum_in_reduced_precision():
    """Under autocast or on bf16 maps the residual stays an explicit sum, as the plain layers
    compute it (``1 + w`` in bf16 would round the centre weight)."""
    x, weight, bias = residual_inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fuses_residual(x)
        out = residual_depthwise_conv(x, weight, bias)
        plain = x + F.conv2d(x, weight, bias, padding=1, groups=6)
    assert torch.equal(out, plain)
    x16 = x.detach().to(torch.bfloat16)
    assert not fuses_residual(x16)
    assert torch.equal(residual_depthwise_conv(x16, weight, bias),
                       x16 + F.conv2d(x16, weight.to(x16.dtype), bias.to(x16.dtype), padding=1,
                                      groups=6))
