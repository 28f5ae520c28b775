"""The contract every camkit explainer keeps, and that everything using one relies on.

An explainer is bound to a model (and usually to layers) when it is built and
explains a batch when it is called. The map store, the metrics and the
command line use explainers only through this contract: they call
:meth:`Explainer.explain`, read what it *declares* it can do (class
attributes, checked by one shared test for every camkit explainer) and read
:meth:`Explainer.settings` for what decides its maps, instead of probing
signatures or inner attributes.

>>> import torch
>>> from torch import nn
>>> import camkit
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
>>> cam = camkit.GradCAM(model, "1")
>>> isinstance(cam, camkit.Explainer), cam.differentiable, cam.layer_resolution
(True, True, True)
>>> cam.settings()["method"], cam.settings()["layers"]
('GradCAM', ['1'])
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from camkit._engine.option_checks import flag
from camkit.errors import CamkitValueError
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["Explainer", "differentiable_methods", "setting"]

_PUBLIC: list[type[Explainer]] = []
"""camkit's own explainer classes, in the order they were defined."""


class Explainer(ABC):
    """What every camkit explainer is: a model (and layers) bound once, a batch explained per call.

    Subclasses implement :meth:`explain` with at least the keyword arguments
    below, set :attr:`model` and :attr:`layer_names` when built, declare their
    capabilities as class attributes, and extend :meth:`settings` with every
    option of their constructor that changes the maps. ``__call__`` returns
    ``explain(...).maps``.

    The shared contract test builds every camkit explainer and checks each
    declaration: a method declared :attr:`differentiable` passes
    :func:`torch.autograd.gradcheck` through its maps, one that is not
    refuses ``differentiable=True`` with a :class:`~camkit.CamkitValueError`
    giving :attr:`not_differentiable_because`; :attr:`layer_resolution`
    methods return the layer's resolution with ``upsample=False`` and the
    others refuse it; every constructor option appears in :meth:`settings`
    and changing it changes them.
    """

    differentiable: ClassVar[bool] = False
    """Whether ``explain(..., differentiable=True)`` keeps the maps in the autograd graph."""

    not_differentiable_because: ClassVar[str] = (
        "its weights come from forward passes run without gradients"
    )
    """Why not, for the error message, where :attr:`differentiable` is ``False``."""

    layer_resolution: bool = False
    """Whether ``explain(..., upsample=False)`` returns maps at the layer's resolution
    (otherwise maps are always at the input's resolution, and ``upsample=False`` is refused);
    a class declares it, and an instance may narrow it (a CAM fusing several layers)."""

    input_channels: ClassVar[bool] = False
    """Whether a sample's map has the input's channels, ``(N, C, *spatial)`` like ``x``
    (Guided Backprop), rather than one value per position, ``(N, *spatial)``."""

    reports_output: ClassVar[bool] = False
    """Whether the ``output`` of ``explain(x, ...)`` is the model's own eval-mode output on
    ``x`` itself (that of the forward pass the maps come from), so that a caller needing the
    model's predictions on ``x`` can read them there instead of running the model again
    (the robustness metrics do, for each noisy copy). :func:`camkit.testing.check_explainer`
    checks it. camkit's explainers declare it; a new one is not assumed to."""

    model: nn.Module
    """The model explained; the explainer never modifies it."""

    layer_names: list[str]
    """The names of the layers explained (empty for a method that explains the input)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "explain" in cls.__dict__ and "__call__" not in cls.__dict__:
            cls.__call__ = _maps_only(cls.explain)  # type: ignore[method-assign]
        if cls.__module__.startswith("camkit.") and not cls.__name__.startswith("_"):
            _PUBLIC.append(cls)

    @abstractmethod
    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        upsample: bool = True,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Run the model on ``x`` and explain ``target``.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: What to explain (see :mod:`camkit.targets`).
            upsample: Maps at the input's resolution (``True``) or the layer's
                (``False``, only where :attr:`layer_resolution`).
            differentiable: Keep the maps in the autograd graph (only where
                :attr:`differentiable`).
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The maps with the output, scores and classes of the same forward pass.
        """

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        """Return only the maps: ``explain(...).maps``, with the same arguments."""
        return self.explain(*args, **kwargs).maps

    def settings(self) -> dict[str, Any]:
        """Everything that decides this explainer's maps, as JSON values.

        The method's name, the layers and every option given when it was built
        (defaults included); the model's weights are not part of it. Two
        explainers of one model with equal settings give equal maps (up to the
        randomness of an unseeded method). The map store refuses to resume a
        run whose settings differ.
        """
        return {"method": type(self).__name__, "layers": list(self.layer_names)}

    def check_options(self, *, upsample: bool, differentiable: bool) -> None:
        """Refuse, with a clear error, the call options this explainer does not offer.

        Raises:
            CamkitTypeError: For ``upsample`` or ``differentiable`` not a bool.
            CamkitValueError: For ``differentiable=True`` where the maps cannot
                be differentiated, or ``upsample=False`` where the maps are
                only at the input's resolution.
        """
        name = type(self).__name__
        flag(upsample, "upsample")
        flag(differentiable, "differentiable")
        if differentiable and not self.differentiable:
            raise CamkitValueError(
                f"differentiable: {name}'s maps cannot be differentiated: "
                f"{self.not_differentiable_because}; differentiable maps come from "
                f"{differentiable_methods()}"
            )
        if not upsample and not self.layer_resolution:
            raise CamkitValueError(
                f"upsample: {name} has only input-resolution maps; pass upsample=True"
            )


def _maps_only(explain: Callable[..., CAMResult]) -> Callable[..., Tensor]:
    """An explainer's ``__call__``, made from its ``explain``: the same arguments, declared
    once, and only the maps returned."""

    def call(self: Explainer, /, *args: Any, **kwargs: Any) -> Tensor:
        return self.explain(*args, **kwargs).maps

    # help(), IDEs and Sphinx show explain's arguments, and the maps as what comes back
    signature = inspect.signature(explain).replace(return_annotation="Tensor")
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {**explain.__annotations__, "return": "Tensor"}
    call.__module__ = explain.__module__
    call.__name__ = "__call__"
    call.__qualname__ = explain.__qualname__.replace("explain", "__call__")
    call.__doc__ = (
        "Return only the maps: ``explain(...).maps``, with the same arguments as :meth:`explain`."
    )
    return call


def differentiable_methods() -> str:
    """The camkit methods whose maps can stay in the autograd graph, as messages list them."""
    names = [c.__name__ for c in _PUBLIC if c.differentiable and not _is_abstract(c)]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _is_abstract(cls: type) -> bool:
    return bool(getattr(cls, "__abstractmethods__", None))


def setting(value: Any) -> Any:
    """A constructor option as a JSON value, for :meth:`Explainer.settings`: numbers,
    strings and lists as they are, an explainer by its settings, a module or a function by
    its name (a function's code is not compared), a float that is not finite as its string.

    Example:
        >>> setting((7, 7)), setting(float("inf"))
        ([7, 7], 'inf')
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [setting(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): setting(v) for k, v in value.items()}
    if isinstance(value, Explainer):
        return value.settings()
    if isinstance(value, nn.Module):
        return f"module {type(value).__qualname__}"
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', None) or '?'}.{name}"
