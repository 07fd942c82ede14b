"""One loader for every DAT / DAT++ checkpoint shape: official, bare, DDP, dense-prediction
(mmdet/mmseg), Lightning and safetensors files, with resolution change and a report of what
happened.

:func:`load_checkpoint` reads the file safely (``weights_only=True`` unless ``allow_pickle``; a
refused file is told apart from a hostile one by the globals it would call), finds the state dict
and the key prefix the backbone sits under (the EMA copy of a task checkpoint first), maps the
official dense code's names (LayerScale ``gamma``), resizes position tables like the official
``load_pretrained``, rebuilds index/mask buffers the checkpoint lacks, re-initialises a classifier
of the wrong size and refuses keys that nothing explains.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.models import adapt_input_conv

from ..download import file_kind as _file_kind
from ..download import is_safetensors as _is_safetensors
from .dat import DAT, DATFeatures
from .weights import resolve_weights

__all__ = ["CheckpointError", "LoadReport", "describe_state_dict", "extract_state_dict",
           "load_checkpoint", "read_checkpoint"]

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
_INDEX_BUFFERS = ("relative_position_index", "attn_mask")  # rebuilt by the model, never learned
_DENSE_GAMMA = re.compile(r"(\.layer_scales\.\d+)\.gamma$")  # official dense LayerScale name
_EMA_SEGMENTS = {"ema", "model_ema", "ema_model"}
# Globals whose call on unpickling runs commands, code or file/network access.
_DANGEROUS_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "pty", "runpy",
                      "ctypes", "importlib", "pickle", "marshal", "code", "webbrowser",
                      "multiprocessing", "urllib", "http"}
_DANGEROUS_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "setattr", "delattr",
                       "globals", "vars", "breakpoint", "input"}  # not getattr: enums pickle with it
_MIN_MATCH_FRACTION = 0.5  # below this share of the model's keys a checkpoint is another model


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did with each entry.

    ``renamed`` (checkpoint names mapped to the model's, e.g. the dense LayerScale ``gamma``),
    ``interpolated``, ``reinitialised``, ``missing`` (model entries the checkpoint lacks, kept at
    their initial value) and ``unexpected`` (checkpoint entries not used) map model or checkpoint
    keys to the reason. ``ema`` is True when the EMA copy of the weights was loaded.
    """

    source: str
    prefix: str = ""
    ema: bool = False
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    interpolated: dict[str, str] = field(default_factory=dict)
    reinitialised: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    unexpected: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        prefix = f" (under prefix {self.prefix!r})" if self.prefix else ""
        ema = " (the EMA weights; prefer_ema=False loads the raw ones)" if self.ema else ""
        lines = [f"loaded {len(self.loaded)} entries from {self.source}{prefix}{ema}"]
        for title, entries in (("renamed", self.renamed), ("interpolated", self.interpolated),
                               ("re-initialised", self.reinitialised),
                               ("missing from the checkpoint", self.missing),
                               ("unused from the checkpoint", self.unexpected)):
            by_reason: dict[str, list[str]] = defaultdict(list)
            for key, reason in entries.items():
                by_reason[reason].append(key)
            for reason, keys in by_reason.items():
                lines.append(f"  {title} ({len(keys)}): {_preview(keys)}: {reason}")
        return "\n".join(lines)


def _preview(keys: list[str], n: int = 3) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --- reading -------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """Read a ``torch.save`` file (on CPU) or a ``.safetensors`` file.

    ``torch.load`` runs with ``weights_only=True``, which only rebuilds tensors and plain
    containers. ``allow_pickle=True`` unpickles arbitrary objects: only for files from a source you
    trust, since unpickling can execute code. Either way a file whose pickle would call something
    that runs commands or code (``os.system``, ``eval``, ...) is refused, with a warning.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _is_safetensors(head):
        try:
            return safetensors.torch.load_file(path)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be "
                                  "truncated or corrupted: download or copy it again") from exc
    if not head:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{path} is not a checkpoint: it looks like {_file_kind(head)} (starts with "
            f"{head[:8]!r}); expected a torch.save file (.pth/.pt/.ckpt) or a .safetensors file")
    if allow_pickle and (danger := [n for n in _blocked_globals(path) if _is_dangerous(n)]):
        raise _dangerous(path, danger)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if not allow_pickle and "weights only load failed" in str(exc).lower():
            raise _refusal(path, exc) from exc
        raise CheckpointError(f"{path} could not be unpickled ({exc}); the file is corrupted or "
                              "truncated: download or copy it again") from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupted ({exc}); download or copy it "
                              "again") from exc


def _blocked_globals(path: Path, exc: Exception | None = None) -> list[str]:
    """The globals outside torch's safe list that the file's pickle would call: torch's scan of
    the pickle (no code runs), else the names in the message of torch's refusal ``exc``."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy or damaged pickle streams: fall back to torch's message
        found = []
    return sorted(set(found) or set(re.findall(r"GLOBAL ([\w.]*\w)", str(exc or ""))))


def _is_dangerous(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return (module.split(".")[0] in _DANGEROUS_MODULES
            or (module in ("builtins", "__builtin__") and attr in _DANGEROUS_BUILTINS))


def _dangerous(path: Path, danger: list[str]) -> CheckpointError:
    """Warn about, and refuse, a file whose pickle would run commands or code."""
    message = (f"{path} would call {', '.join(danger)} when unpickled: loading it runs commands "
               "or code on your machine, which is how malicious checkpoints work. Do not load it "
               "(allow_pickle=True refuses it too); delete it and get the weights from a trusted "
               "source (a .safetensors file cannot run code)")
    rank_zero_warn(f"DANGER: {message}")
    return CheckpointError(f"refused {message}")


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    """The error for a file the weights-only load refused, naming what it would call; files that
    would run commands or code get a warning, and no invitation to ``allow_pickle``."""
    names = _blocked_globals(path, exc)
    danger = [n for n in names if _is_dangerous(n)]
    if danger:
        return _dangerous(path, danger)
    listed = ", ".join(names) if names else "not named by torch"
    return CheckpointError(
        f"{path} contains Python objects besides tensors ({listed}), which the safe weights-only "
        "load refuses. If you trust the file's source, pass allow_pickle=True (full unpickling "
        "can execute arbitrary code from the file, so never use it on files from unknown "
        "sources), or allow just these types with torch.serialization.add_safe_globals")


def extract_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """The tensors of a loaded checkpoint: a bare state dict, or one wrapped under ``model`` (the
    official files), ``state_dict`` (Lightning and many trainers), ``module`` or
    ``model_state_dict``; a pickled ``nn.Module`` gives its ``state_dict()``."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping | nn.Module):
            return extract_state_dict(obj[key], source)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source} is a dict without tensors (keys {_preview(list(obj), 8)}); "
                              f"expected a state dict, bare or under one of {_WRAPPER_KEYS}")
    return tensors


# --- describing ----------------------------------------------------------------------------------
_SIGNATURES = (
    ("a ResNet", ("conv1.weight", "layer1.0.")),
    ("a Vision Transformer", ("cls_token", "blocks.0.attn")),
    ("a Swin Transformer", ("layers.0.blocks.0.attn.relative_position_bias_table",)),
    ("a ConvNeXt", ("downsample_layers.0", "stages.0.0.dwconv")),
    ("a ConvNeXt (timm)", ("stem.0.weight", "stages.0.blocks.0.conv_dw")),
)


_DAT_BLOCK_KEY = re.compile(r"(.*?)stages\.\d+\.attns\.\d+\.")
_DENSE_PARTS = {"neck", "decode_head", "auxiliary_head", "rpn_head", "roi_head", "bbox_head",
                "mask_head"}
_PP_MARKERS = ("patch_proj.3.", ".rpb", ".local_perception_units.", ".layer_scales.")


def _describe_dat(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)
    gen = "DAT++" if any(m in k for k in keys for m in _PP_MARKERS) else "DAT"
    depths = [len({m.group(1) for k in keys if (m := re.match(rf"stages\.{i}\.attns\.(\d+)\.", k))})
              for i in range(4)]
    dims = [int(state[k].shape[0]) for i in range(4)
            if (k := f"stages.{i}.layer_norms.0.norm.weight") in state]
    norms = sorted({int(m.group(1)) for k in keys if (m := re.match(r"norms\.(\d+)\.", k))})
    outputs = f", output norms of stages {norms}" if norms else ""
    return f"{gen} with depths {depths}, dims {dims}{outputs}"


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Short guess of the architecture a state dict belongs to (DAT depths/dims where it is one),
    seeing through key prefixes (``backbone.`` of mmdet/mmseg, ``model.`` of a task, ...)."""
    keys = list(state)
    prefixes = Counter(m.group(1) for k in keys if (m := _DAT_BLOCK_KEY.match(k)))
    if prefixes:
        prefix = prefixes.most_common(1)[0][0]
        what = _describe_dat({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        if not prefix:
            return what
        others = sorted({k.split(".")[0] for k in keys if not k.startswith(prefix)})
        with_others = f", with {'/'.join(others)} entries" if others else ""
        if prefix == "backbone." and _DENSE_PARTS & set(others):
            return (f"an mmdet/mmseg checkpoint whose backbone ('backbone.') is {what}"
                    f"{with_others}")
        return f"{what} under the key prefix {prefix!r}{with_others}"
    for name, needles in _SIGNATURES:
        if all(any(n in k for k in keys) for n in needles):
            return f"{name} ({_preview(keys, 2)})"
    return f"an unknown architecture ({_preview(keys, 3)})"


def _model_name(model: nn.Module) -> str:
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    what = describe_state_dict(model.state_dict())
    return f"{type(model).__name__} ({arch}: {what})" if arch else f"{type(model).__name__} ({what})"


# --- matching ------------------------------------------------------------------------------------
def _is_ema(prefix: str) -> bool:
    """``model_ema.module.``, ``ema.``, ``model.ema.``, ``*_ema.``: the prefix of an EMA copy."""
    return any(seg in _EMA_SEGMENTS or seg.endswith("_ema") for seg in prefix.split(".")[:-1])


def _find_prefix(keys: list[str], target_keys: set[str], prefer_ema: bool = True
                 ) -> tuple[str, int, list[str]]:
    """The key prefix (``""``, ``"module."``, ``"model.backbone."``, ...) under which most
    checkpoint keys are model keys, how many match under it, and the other prefixes that match as
    many (a second copy of the weights). Of a raw and an EMA copy (a task trained with
    ``ema_decay``), the EMA one is chosen unless ``prefer_ema`` is False."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in target_keys:
                counts["".join(p + "." for p in parts[:i])] += 1
    if not counts:
        return "", 0, []
    best = max(counts.values())
    tied = sorted((p for p, n in counts.items() if n == best), key=len)
    prefix = next((p for p in tied if _is_ema(p) == prefer_ema), tied[0])
    return prefix, best, [p for p in tied if p != prefix]


def _outside_reason(key: str, prefix: str, copies: list[str]) -> str:
    """Why a checkpoint entry outside the chosen prefix is not used."""
    copy = next((c for c in copies if key.startswith(c)), None)
    if copy is None:
        return (f"outside the backbone prefix {prefix!r} (task head or other part of the source "
                "model): not used")
    if _is_ema(prefix):
        return ("raw (non-EMA) weights of the source: the EMA copy was loaded instead "
                "(prefer_ema=False loads these)")
    if _is_ema(copy):
        return "EMA copy of the weights: the raw weights were loaded as asked (prefer_ema=False)"
    return f"second copy of the weights under {copy!r}: the one under {prefix!r} was loaded"


def _rename_dense(src: StateDict, target: Mapping[str, torch.Tensor]
                  ) -> tuple[StateDict, dict[str, str]]:
    """Map the official dense code's LayerScale ``...layer_scales.j.gamma`` onto the model's
    ``...layer_scales.j.weight``; returns the renamed state and ``{model key: reason}``."""
    renamed, out = {}, {}
    for key, value in src.items():
        alias = _DENSE_GAMMA.sub(r"\1.weight", key)
        if key not in target and alias != key and alias in target:
            renamed[alias] = "LayerScale 'gamma' of the official dense code, loaded as 'weight'"
            key = alias
        out[key] = value
    return out, renamed


def _resize_bias_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """``[(2w-1)^2, heads]`` Swin bias table -> ``[rows, heads]``, bicubic, as the official code."""
    n, heads = table.shape
    side, new_side = math.isqrt(n), math.isqrt(rows)
    grid = table.float().reshape(1, side, side, heads).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, (new_side, new_side), mode="bicubic")
    return grid.reshape(heads, new_side * new_side).permute(1, 0)


def _resize_rpe_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[heads, 2h-1, 2w-1]`` deformable-attention table -> ``[heads, *size]``, bicubic."""
    return F.interpolate(table.float()[None], size, mode="bicubic")[0]


def _adapt_mismatch(key: str, value: torch.Tensor, target: torch.Tensor) -> tuple[str, str] | None:
    """``(kind, reason)`` for a shape mismatch that a resolution or class change explains."""
    shapes = f"{tuple(value.shape)} -> {tuple(target.shape)}"
    name = key.rsplit(".", 1)[-1]
    if name in _INDEX_BUFFERS:
        return "regenerate", f"index buffer rebuilt for the model's window/feature-map size ({shapes})"
    if (name == "relative_position_bias_table" and value.ndim == target.ndim == 2
            and value.shape[1] == target.shape[1] and math.isqrt(value.shape[0]) ** 2 == value.shape[0]
            and math.isqrt(target.shape[0]) ** 2 == target.shape[0]):
        return "interpolate", f"bicubic resize {shapes}"
    if name == "rpe_table" and value.ndim == target.ndim == 3 and value.shape[0] == target.shape[0]:
        return "interpolate", f"bicubic resize {shapes}"
    if (key == "patch_proj.0.weight" and value.ndim == 4 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]):
        return "adapt_in_chans", (f"first conv adapted from {value.shape[1]} to {target.shape[1]} "
                                  "input channels like timm's adapt_input_conv")
    if (key.startswith("cls_head.") and value.shape[0] != target.shape[0]
            and value.shape[1:] == target.shape[1:]):
        return "reset_head", (f"cls_head re-initialised: checkpoint has {value.shape[0]} classes, "
                              f"model {target.shape[0]}")
    return None


def _explain_missing(key: str, features: bool, source_has_head: bool) -> str | None:
    if key.rsplit(".", 1)[-1] in _INDEX_BUFFERS:
        return ("index/mask buffer the model builds itself (the official dense code stores none): "
                "constructed value kept")
    if features and key.startswith("norms."):
        return "output norm of the features model, not in a classification checkpoint: new"
    if not features and key.startswith(("cls_norm.", "cls_head.")) and not source_has_head:
        return "classifier, not in a backbone checkpoint: new"
    return None


def _explain_unexpected(key: str, model: nn.Module, features: bool) -> str | None:
    if features:
        if key.startswith(("cls_norm.", "cls_head.")):
            return "classification norm/head of the source, not used by a features model"
        m = re.match(r"(stages|down_projs|norms)\.(\d+)\.", key)
        if m and (m.group(1) == "norms" or len(getattr(model, m.group(1))) <= int(m.group(2))):
            return "belongs to a stage or output the features model does not return (out_indices)"
        return None
    if key.startswith("norms."):
        return "output norm of a dense-prediction backbone, not used by the classifier"
    if key.startswith("cls_head.") and not isinstance(model.cls_head, nn.Linear):
        return "classifier of the source; the model has none (num_classes=0)"
    return None


def _check_model(model: nn.Module) -> bool:
    """True for a :class:`DATFeatures`, False for a :class:`DAT`; TypeError otherwise."""
    if not isinstance(model, DAT | DATFeatures):
        raise TypeError(f"load_checkpoint expects a DAT or DATFeatures model, got "
                        f"{type(model).__name__}; pass the DAT backbone inside your module")
    return isinstance(model, DATFeatures)


def _adapt(state: StateDict, model: nn.Module, features: bool, source: str, strict: bool,
           prefer_ema: bool = True) -> tuple[StateDict, LoadReport, list[str]]:
    """Build the complete state dict to load into ``model``; returns it, the report and the
    classifier keys to re-initialise."""
    target = model.state_dict()
    prefix, matched, copies = _find_prefix(list(state), set(target), prefer_ema)
    if matched < _MIN_MATCH_FRACTION * len(target):
        raise CheckpointError(
            f"{source} has {len(state)} entries of which {matched} match the keys of "
            f"{_model_name(model)}; it looks like {describe_state_dict(state)}. Load a checkpoint "
            "of a DAT/DAT++ model of the same configuration")
    report = LoadReport(source=source, prefix=prefix, ema=_is_ema(prefix))
    src = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    src, report.renamed = _rename_dense(src, target)
    for key in state:
        if not key.startswith(prefix):
            report.unexpected[key] = _outside_reason(key, prefix, copies)
    source_has_head = any(k.startswith("cls_head.") for k in src)
    new_state, reset, unexplained = dict(target), [], defaultdict(list)
    for key, tgt in target.items():
        if key not in src:
            reason = _explain_missing(key, features, source_has_head)
            if reason is None:
                unexplained["missing"].append(key)
            else:
                report.missing[key] = reason
            continue
        value = src[key]
        if value.shape == tgt.shape:
            new_state[key] = value
            report.loaded.append(key)
            continue
        kind, reason = _adapt_mismatch(key, value, tgt) or (None, None)
        if kind == "interpolate":
            resize = _resize_bias_table if value.ndim == 2 else _resize_rpe_table
            new_state[key] = resize(value, tgt.shape[0] if value.ndim == 2 else tgt.shape[1:])
            report.interpolated[key] = reason
        elif kind == "adapt_in_chans":
            new_state[key] = adapt_input_conv(tgt.shape[1], value).to(tgt.dtype)
            report.interpolated[key] = reason
        elif kind is not None:
            report.reinitialised[key] = reason
            if kind == "reset_head":
                reset.append(key)
        else:
            unexplained["shape"].append(f"{key}: checkpoint {tuple(value.shape)}, "
                                        f"model {tuple(tgt.shape)}")
    for key in src.keys() - target.keys():
        reason = _explain_unexpected(key, model, features)
        if reason is None:
            unexplained["unexpected"].append(key)
        else:
            report.unexpected[key] = reason
    if unexplained:
        _handle_unexplained(unexplained, report, state, model, source, strict)
    return new_state, report, reset


def _handle_unexplained(unexplained: dict[str, list[str]], report: LoadReport, state: StateDict,
                        model: nn.Module, source: str, strict: bool) -> None:
    titles = {"missing": "model entries missing from the checkpoint",
              "unexpected": "checkpoint entries the model does not have",
              "shape": "entries with a different shape"}
    details = "; ".join(f"{len(keys)} {titles[kind]}: {_preview(sorted(keys), 4)}"
                        for kind, keys in unexplained.items())
    if strict:
        raise CheckpointError(
            f"{source} does not fit {_model_name(model)}: {details}. The checkpoint looks like "
            f"{describe_state_dict(state)}. Use the preset/configuration the checkpoint was "
            "trained with, or pass strict=False to load only the matching entries (the rest are "
            "reported)")
    for key in unexplained.get("missing", []):
        report.missing[key] = "not in the checkpoint (strict=False): keeps its initial value"
    for key in unexplained.get("unexpected", []):
        report.unexpected[key] = "not in the model (strict=False): ignored"
    for item in unexplained.get("shape", []):
        report.reinitialised[item.split(":")[0]] = f"shape mismatch ({item}, strict=False): kept"
    rank_zero_warn(f"loading {source} with strict=False: {details}")


def load_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                    strict: bool = True, allow_pickle: bool = False, prefer_ema: bool = True
                    ) -> LoadReport:
    """Load a checkpoint into a :class:`DAT` or :class:`DATFeatures` and report what happened.

    Args:
        model: the target model.
        source: a file (``.pth``/``.pt``/``.ckpt``/``.safetensors``), a registered weight name
            (``"dat_tiny.in1k"`` or ``"dat_tiny"``, downloaded once), or an in-memory state dict.
            The state dict may be bare or under ``model``/``state_dict``, and the backbone may sit
            under any key prefix (``module.``, ``backbone.``, ``model.backbone.``, ...).
            Official dense-prediction (mmdet/mmseg) checkpoints load into a
            :class:`DATFeatures`: neck/head entries are reported unused, the LayerScale
            ``gamma`` loads into ``weight``, and buffers they lack (``attn_mask``) are rebuilt.
        strict: refuse entries that no resolution, class-count or model-type change explains.
            With ``strict=False`` they are skipped, reported and warned about.
        allow_pickle: fully unpickle the file instead of the safe weights-only load. Unpickling
            can execute arbitrary code: use it only for files from a source you trust. A
            refused file's error names the globals it would call; files that would run
            commands or code (``os.system``, ``eval``, ...) are warned about and refused even
            with ``allow_pickle=True``.
        prefer_ema: when the checkpoint holds the weights twice, raw and as an EMA copy (a task
            checkpoint trained with ``ema_decay``: ``model.*`` and ``model_ema.module.*``), load
            the EMA copy, the one validated and used to pick the best checkpoint
            (``report.ema`` is True). ``False`` loads the raw weights.

    Returns:
        A :class:`LoadReport`, also logged on rank zero.

    Raises:
        CheckpointError: unreadable file, wrong architecture, or (strict) unexplained entries.
    """
    features = _check_model(model)
    if isinstance(source, Mapping):
        name, state = "<state dict>", extract_state_dict(source, "<state dict>")
    else:
        path = resolve_weights(source)
        name = str(path)
        state = extract_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), name)
    new_state, report, reset = _adapt(state, model, features, name, strict, prefer_ema)
    model.load_state_dict(new_state, strict=True)
    if reset:
        model.cls_head.reset_parameters()
    rank_zero_info(str(report))
    return report
