"""What the randomisation tests share: the layers that own parameters, in the order the
forward pass runs them, and re-initialising one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camkit._engine.model import eval_mode
from camkit.errors import CamkitValueError


def parameterized_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Modules that own parameters, in the order the forward pass runs them."""
    owners = {
        name: module
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    }
    seen: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
        for name, module in owners.items()
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(seen))


def chosen_layers(layers: str | list[str] | None, order: list[str]) -> list[str]:
    """The layers a randomisation test randomises: ``order`` (the model's parameterised
    layers) for ``None``, else ``layers`` (one name, or a list), each checked to be one of
    ``order``."""
    if layers is None:
        return order
    if not isinstance(layers, (str, list, tuple)) or not all(
        isinstance(name, str) for name in ([layers] if isinstance(layers, str) else layers)
    ):
        raise CamkitValueError(
            f"layers: got {layers!r}; allowed: a layer's name, a list of names, or None for all"
        )
    chosen = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in chosen if name not in order]
    if unknown:
        raise CamkitValueError(
            f"layers: {unknown} own no parameters the forward pass uses; choose from {order}"
        )
    if not chosen:
        raise CamkitValueError(
            f"layers: got an empty list; allowed: one or more of {order}, or None for all"
        )
    return chosen


def randomize(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` from ``seed``: its ``reset_parameters``, else N(0, 0.02) for
    its own parameters. Only the generator of the module's device is seeded, and the
    caller's random state is restored after: ``torch.manual_seed`` would also seed, and
    leave seeded, every CUDA, XPU and MTIA generator, and where those devices are not
    started it records a stack trace for each (about a millisecond a call)."""
    device = next(module.parameters(), torch.empty(0)).device
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            _reset(module)
        return
    index = device.index if device.index is not None else 0
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        _reset(module)


def _reset(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
    else:
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.02)


def reduce_channels(maps: Tensor, x: Tensor) -> Tensor:
    """Guided-backprop style maps ``(N, C, *spatial)`` are summed over channels."""
    return maps.sum(dim=1) if maps.dim() == x.dim() else maps
