"""Attention micro-benchmarks: each dat-lightning attention layer against its straightforward form.

At DAT-T / DAT++-T stage shapes (batch 8 at 224 by default), forward (no grad) and forward +
backward, the library layer and a straightforward formulation written here run interleaved with the
same weights and input; the outputs are checked equal first. The straightforward forms are:

* window attention: einsum attention per window, the bias table gathered and expanded per window
  and batch element, the shift mask repeated per batch element;
* deformable attention: the official layout: 1x1 ``Conv2d`` projections, queries regrouped
  channels-first for the offset network, the ``rpe_table`` expanded per batch element before
  ``grid_sample``, displacements built per (batch, group) and flipped, einsum attention;
* neighborhood attention: the ``k*k`` keys of every query materialised by indexing, then einsum.

Times are medians of wall time per call, the two forms interleaved so that load drifts hit both.

    python benchmarks/attention_microbench.py --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dat_lightning.models.layers import DeformableAttention, NeighborhoodAttention2d, WindowAttention
from dat_lightning.models.layers.deformable_attention import query_grid, reference_points
from dat_lightning.models.layers.neighborhood_attention import neighborhood_first_keys
from dat_lightning.models.layers.window_attention import shift_mask_for


def window_straightforward(m: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Window attention with per-batch bias/mask copies (map a multiple of the window)."""
    B, C, H, W = x.shape
    ws, nh, n = m.window_size, m.heads, m.window_size ** 2
    x = x.permute(0, 2, 3, 1)
    if m.shift:
        x = torch.roll(x, (-m.shift, -m.shift), (1, 2))
    r1, r2 = H // ws, W // ws
    win = x.reshape(B, r1, ws, r2, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * r1 * r2, n, C)
    q, k, v = m.proj_qkv(win).reshape(-1, n, 3, nh, m.head_dim).permute(2, 0, 3, 1, 4)
    attn = torch.einsum("bhnd,bhmd->bhnm", q * m.scale, k)
    table = m.relative_position_bias_table[m.relative_position_index.view(-1)]
    bias = table.view(n, n, nh).permute(2, 0, 1).unsqueeze(0).repeat(B * r1 * r2, 1, 1, 1)
    attn = attn + bias
    if m.shift:
        mask = shift_mask_for(m.attn_mask, m.fmap_size, H, W, ws, m.shift)
        attn = attn + mask.repeat(B, 1, 1).unsqueeze(1)
    out = torch.einsum("bhnm,bhmd->bhnd", attn.softmax(-1), v).transpose(1, 2).reshape(-1, n, C)
    out = m.proj_out(out).view(B, r1, r2, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if m.shift:
        out = torch.roll(out, (m.shift, m.shift), (1, 2))
    return out.permute(0, 3, 1, 2)


def deformable_straightforward(m: DeformableAttention, x: torch.Tensor) -> torch.Tensor:
    """Deformable attention as the official code computes it (rpe table copied per image)."""
    B, C, H, W = x.shape
    g, gc, hg = m.groups, m.group_channels, m.group_heads
    q = m.proj_q(x)
    offset = m.conv_offset(q.reshape(B * g, gc, H, W))
    hk, wk = offset.shape[2:]
    ns = hk * wk
    f = m.offset_range_factor
    if f > 0 if m.generation == "v1" else f >= 0:
        span = (1 / hk, 1 / wk) if m.generation == "v1" else (1 / max(hk - 1, 1), 1 / max(wk - 1, 1))
        offset = offset.tanh() * offset.new_tensor(span).view(1, 2, 1, 1) * f
    pos = offset.permute(0, 2, 3, 1) + reference_points(hk, wk, m.generation, x.dtype, x.device)
    if f < 0:
        pos = pos.tanh() if m.generation == "v1" else pos.clamp(-1, 1)
    sampled = F.grid_sample(x.reshape(B * g, gc, H, W), pos[..., (1, 0)], mode="bilinear",
                            align_corners=True).reshape(B, C, 1, ns)
    qh = q.reshape(B * m.heads, m.head_dim, H * W)
    k = m.proj_k(sampled).reshape(B * m.heads, m.head_dim, ns)
    v = m.proj_v(sampled).reshape(B * m.heads, m.head_dim, ns)
    attn = torch.einsum("bcm,bcn->bmn", qh, k).mul(m.scale)
    rpe = m.rpe_table[None].expand(B, -1, -1, -1).reshape(B * g, hg, *m.rpe_table.shape[1:])
    qg = query_grid(H, W, m.generation, x.dtype, x.device)[None].expand(B * g, -1, -1, -1)
    disp = (qg.reshape(B * g, H * W, 1, 2) - pos.reshape(B * g, 1, ns, 2)).mul(0.5)
    bias = F.grid_sample(rpe, disp[..., (1, 0)], mode="bilinear", align_corners=True)
    attn = attn + bias.reshape(B * m.heads, H * W, ns)
    out = torch.einsum("bmn,bcn->bcm", attn.softmax(-1), v).reshape(B, C, H, W)
    return m.proj_out(out)


def neighborhood_straightforward(m: NeighborhoodAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Neighborhood attention with the ``k*k`` keys of every query materialised (map >= kernel)."""
    B, C, H, W = x.shape
    k, nh, hd = m.kernel_size, m.heads, m.head_dim
    qkv = m.qkv(x.permute(0, 2, 3, 1)).view(B, H, W, 3, nh, hd).permute(3, 0, 4, 1, 2, 5)
    q, key, val = qkv.unbind(0)  # [B, nh, H, W, hd]
    rows = neighborhood_first_keys(H, k, H, x.device)[:, None] + torch.arange(k)  # [H, k]
    cols = neighborhood_first_keys(W, k, W, x.device)[:, None] + torch.arange(k)  # [W, k]
    idx_r, idx_c = rows[:, None, :, None], cols[None, :, None, :]  # -> [H, W, k, k]
    keys, vals = key[:, :, idx_r, idx_c], val[:, :, idx_r, idx_c]  # [B, nh, H, W, k, k, hd]
    attn = torch.einsum("bnhwd,bnhwijd->bnhwij", q * m.scale, keys)
    rel_r = idx_r - torch.arange(H)[:, None, None, None] + k - 1
    rel_c = idx_c - torch.arange(W)[None, :, None, None] + k - 1
    attn = (attn + m.rpb[:, rel_r, rel_c]).flatten(-2).softmax(-1).view_as(attn)
    out = torch.einsum("bnhwij,bnhwijd->bnhwd", attn, vals)
    return m.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)).permute(0, 3, 1, 2)


def cases(batch: int) -> list[tuple[str, nn.Module, tuple[int, ...], Callable]]:
    """(name, layer, input shape, straightforward form) at DAT-T / DAT++-T stage shapes."""
    torch.manual_seed(0)
    return [
        ("window L, DAT-T s1 96c 56x56", WindowAttention(96, 3, 7, (56, 56)),
         (batch, 96, 56, 56), window_straightforward),
        ("window S, DAT-T s1 96c 56x56", WindowAttention(96, 3, 7, (56, 56), shift=4),
         (batch, 96, 56, 56), window_straightforward),
        ("window L, DAT-T s3 384c 14x14", WindowAttention(384, 12, 7, (14, 14)),
         (batch, 384, 14, 14), window_straightforward),
        ("deformable, DAT-T s3 384c 14x14", DeformableAttention(384, 12, 3, (14, 14), 1, 5, 2.0),
         (batch, 384, 14, 14), deformable_straightforward),
        ("deformable, DAT-T s4 768c 7x7", DeformableAttention(768, 24, 6, (7, 7), 1, 3, 2.0),
         (batch, 768, 7, 7), deformable_straightforward),
        ("deformable, DAT++-T s1 64c 56x56", DeformableAttention(64, 2, 1, (56, 56), 8, 9, -1,
                                                                 generation="pp"),
         (batch, 64, 56, 56), deformable_straightforward),
        ("deformable, DAT++-T s3 256c 14x14", DeformableAttention(256, 8, 4, (14, 14), 2, 5, -1,
                                                                  generation="pp"),
         (batch, 256, 14, 14), deformable_straightforward),
        ("neighborhood, DAT++-T s1 64c 56x56", NeighborhoodAttention2d(64, 2, 7),
         (batch, 64, 56, 56), neighborhood_straightforward),
        ("neighborhood, DAT++-T s3 256c 14x14", NeighborhoodAttention2d(256, 8, 7),
         (batch, 256, 14, 14), neighborhood_straightforward),
    ]


def call_time(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, train: bool) -> float:
    """Wall seconds of one forward (no grad) or forward + backward call.

    Wall, not process CPU time: idle OpenMP threads spin and would be counted as work."""
    start = time.perf_counter()
    if train:
        fn(x).square().mean().backward()
    else:
        with torch.no_grad():
            fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, fp32, CPU, {args.threads} threads; ms = median wall time "
          f"per call; speed-up = straightforward / dat-lightning\n")
    print("| layer, shape | max rel. diff | fwd ms straightforward | fwd ms dat-lightning | fwd "
          "speed-up | fwd+bwd ms straightforward | fwd+bwd ms dat-lightning | fwd+bwd speed-up |")
    print("| --- |" + " --- |" * 7)
    for name, layer, shape, reference in cases(args.batch):
        x = torch.randn(shape, requires_grad=True)
        with torch.no_grad():
            ours, ref = layer(x), reference(layer, x)
        diff = ((ours - ref).abs().max() / ref.abs().max()).item()
        assert diff < 1e-4, f"{name}: outputs differ by {diff:.2e}"
        forms = {"ref": functools.partial(reference, layer), "ours": layer}
        medians = {}
        for train in (False, True):  # warm up, then interleave the two forms and take medians
            times = {key: [] for key in forms}
            for _ in range(args.repeats + 1):
                for key, fn in forms.items():
                    times[key].append(call_time(fn, x, train))
            medians[train] = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
        cells = [f"{diff:.1e}"]
        for train in (False, True):
            r, o = medians[train]["ref"], medians[train]["ours"]
            cells += [f"{r:.1f}", f"{o:.1f}", f"{r / o:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
