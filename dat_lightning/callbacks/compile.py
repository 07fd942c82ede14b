"""``torch.compile`` the task's DAT backbone when fitting starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from lightning.pytorch import Callback, LightningModule, Trainer

from ..models.dat import DAT, DATFeatures


def backbones(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the outermost DAT / DATFeatures modules inside ``module``."""
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if isinstance(sub, (DAT, DATFeatures)) and not any(
                name.startswith(f"{outer}.") or outer == "" for outer, _ in found):
            found.append((name, sub))
    return found


class CompileBackbone(Callback):
    """Compile the backbone(s) of the task in place (``nn.Module.compile``) at fit start.

    In-place compilation keeps the parameter names, so checkpoints stay loadable without
    ``torch.compile``. The task's heads, losses and metrics stay eager. Every outermost DAT /
    DATFeatures module is compiled (an EMA copy too), or only the submodule named ``module``.

    Args:
        mode: ``torch.compile`` mode (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``, ...).
        dynamic: compile for symbolic batch and image sizes from the first call, so changing
            either (validation at another size, a smaller last batch) does not recompile.
        backend: ``torch.compile`` backend (``"inductor"``, or a callable for debugging).
        fullgraph: fail on a graph break instead of splitting the graph.
        module: dotted name of the submodule to compile (e.g. ``"backbone"``); None finds the DAT
            modules.
        options: backend options passed to ``torch.compile``.
    """

    def __init__(self, mode: str | None = None, dynamic: bool | None = True,
                 backend: str | Callable = "inductor", fullgraph: bool = False,
                 module: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.dynamic = dynamic
        self.backend = backend
        self.fullgraph = fullgraph
        self.module = module
        self.options = options
        self.compiled: list[str] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compile the backbone(s); names of what was compiled are kept in ``self.compiled``."""
        if self.module is not None:
            try:
                targets = [(self.module, pl_module.get_submodule(self.module))]
            except AttributeError as err:
                raise ValueError(f"CompileBackbone(module={self.module!r}): {type(pl_module).__name__}"
                                 f" has no such submodule ({err})") from err
        else:
            targets = backbones(pl_module)
            if not targets:
                raise ValueError(f"CompileBackbone found no DAT backbone in {type(pl_module).__name__};"
                                 " name the submodule to compile with module=...")
        for name, target in targets:
            if name not in self.compiled:
                target.compile(mode=self.mode, dynamic=self.dynamic, backend=self.backend,
                               fullgraph=self.fullgraph, options=self.options)
                self.compiled.append(name)
