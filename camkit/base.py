"""The CAM base class: hooks, targets, gradients, ReLU, upsampling, scaling, fusion.

A method is a subclass that says how channel (or pixel) weights come from the
layer's activations and gradients, by overriding :meth:`BaseCAM.weights`.
Everything else lives here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from camkit import _maps
from camkit._gradients import score_gradients
from camkit._hooks import LayerCapture, ReplaceOutput, capture
from camkit._layout import Layout
from camkit._model import (
    check_finite_input,
    check_input,
    detached,
    eval_mode,
    forward,
    select_rows,
)
from camkit.errors import CamkitValueError
from camkit.layers import find_layer
from camkit.targets import BoundTarget, Target, bind_target, check_target

__all__ = ["BaseCAM", "CAMResult", "LayerContext"]

LayerSpec = str | nn.Module


@dataclass(frozen=True)
class CAMResult:
    """Everything one call of :meth:`BaseCAM.explain` produced.

    Attributes:
        maps: The maps, float32 on the input's device: ``(N, *input spatial)``
            by default, ``(N, *layer spatial)`` with ``upsample=False``, and
            ``(N, k, ...)`` for ``k`` targets per sample.
        output: The model output of the same forward pass (detached), so the
            predictions need no second forward pass.
        scores: The explained score of each sample, ``(N,)`` (or ``(N, k)``), detached.
        classes: The class explained for each sample, ``(N,)`` (or ``(N, k)``),
            or ``None`` when the target was a callable.
        layer_maps: Each layer's own map, after ReLU, upsampling and scaling as
            requested, keyed by layer name (one entry for a single layer, a
            copy of ``maps``: editing one in place leaves the other alone).
    """

    maps: Tensor
    output: Any
    scores: Tensor
    classes: Tensor | None
    layer_maps: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerContext:
    """What a method sees of one layer when it computes its weights.

    Attributes:
        layer: The layer's name.
        activations: The layer's output ``A`` as float32 ``(N, 1, C, *spatial)``;
            the singleton axis broadcasts against the ``k`` targets.
        scores: The target scores of the forward pass, ``(N, k)``.
        classes: The target classes ``(N, k)``, or ``None`` for a callable target.
        inputs: The input batch ``x``.
    """

    layer: str
    activations: Tensor
    scores: Tensor
    classes: Tensor | None
    inputs: Tensor
    _gradients: Tensor | None
    _cam: BaseCAM
    _target: BoundTarget
    _native: Tensor
    _call: int
    _forward_args: tuple[Any, ...] = ()
    _forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def _run(self, inputs: Tensor, samples: Tensor) -> Any:
        args, kwargs = select_rows(
            self._forward_args, self._forward_kwargs, samples, len(self.inputs)
        )
        return forward(self._cam.model, inputs, args, kwargs)

    @property
    def gradients(self) -> Tensor:
        """``d score / d A`` as float32 ``(N, k, C, *spatial)``, one slice per target."""
        if self._gradients is None:
            raise CamkitValueError(
                f"gradients: {type(self._cam).__name__} sets needs_gradients = False, "
                f"so no gradients were computed"
            )
        return self._gradients

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The axes of :attr:`activations` and :attr:`gradients` that are spatial."""
        return tuple(range(3, self.activations.dim()))

    @torch.no_grad()
    def score_inputs(self, inputs: Tensor, samples: Tensor) -> Tensor:
        """Run the model on other inputs; row ``i`` belongs to sample ``samples[i]``.

        Returns:
            The target scores ``(M, k)`` of each row, for its sample's targets.
        """
        return self._target.scores(self._run(inputs, samples), samples).float()

    @torch.no_grad()
    def score_activations(self, activations: Tensor, samples: Tensor) -> Tensor:
        """Run the model with the layer's output replaced.

        Args:
            activations: Replacement activations ``(M, C, *spatial)``, one row per
                run, in the channels-first layout of :attr:`activations`.
            samples: ``(M,)`` the sample each row belongs to; its input is used.

        Returns:
            The target scores ``(M, k)`` of each row.
        """
        native = self._native[samples]
        replacement = self._cam.layout.from_channels_first(activations, native)
        name, module = self._cam.layers[self._cam.layer_names.index(self.layer)]
        with ReplaceOutput(name, module, self._call, replacement.to(native.dtype)):
            output = self._run(self.inputs[samples], samples)
        return self._target.scores(output, samples).float()


class BaseCAM(ABC):
    """A class activation map method bound to one or more layers of a model.

    Constructing a CAM only looks the layers up; it attaches nothing to the
    model. Each call attaches forward hooks, runs the model, and removes the
    hooks before returning or raising. During the call the model is in eval
    mode (and out of :func:`torch.inference_mode`, which forbids gradients);
    afterwards every module's ``training`` flag is as it was, no parameter's
    ``.grad`` has changed, and no hook remains.

    The part of the network before the (first) layer runs under
    :func:`torch.no_grad`; autograd records only the part after it, and the
    gradient of the score with respect to the layer's output comes from
    :func:`torch.autograd.grad`, so nothing is back-propagated into parameters.

    If a layer runs several times in one forward pass (torchvision's ResNet
    blocks call one ``ReLU`` two or three times), its *last* call, the one
    nearest the output, is explained.

    A layer's output is copied before it flows on only where the network
    modifies it in place. Every call checks the activation's version counter:
    if the network overwrote an uncopied activation, the call runs the model
    once more with a copy (and remembers to copy that layer's output from then
    on), so the map is always that of the intact activation.

    Args:
        model: Any :class:`torch.nn.Module`. It is not modified.
        layer: The layer to explain: a dotted name as in
            :meth:`torch.nn.Module.named_modules` (``"features.relu"``) or the
            module object; or a list of them, whose maps are fused (each
            layer's map upsampled to the input and scaled to [0, 1], then
            averaged). Each output must be a floating-point tensor of shape
            ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` in the given
            ``layout``.
        layout: ``"channels_first"`` (default), ``"channels_last"`` for
            ``(N, *spatial, C)`` outputs (Swin, ConvNeXt blocks), or
            ``"tokens"`` for ``(N, T, C)`` transformer outputs.
        prefix_tokens: With ``layout="tokens"``: how many leading tokens (CLS,
            distillation) to drop before arranging the rest on a grid.
        grid: With ``layout="tokens"``: the token grid, such as ``(14, 14)``;
            inferred as a square when omitted.

    Raises:
        CamkitValueError: If the model has no such layer (the message lists
            the closest names), the list of layers is empty or repeats one, or
            the layout options are invalid.
        CamkitTypeError: If ``model`` or ``layer`` has the wrong type.
    """

    needs_gradients: ClassVar[bool] = True
    """Whether :meth:`weights` uses :attr:`LayerContext.gradients`."""

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | Sequence[LayerSpec],
        *,
        layout: str = "channels_first",
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
    ) -> None:
        specs = list(layer) if isinstance(layer, (list, tuple)) else [cast(LayerSpec, layer)]
        if not specs:
            raise CamkitValueError("layer: got an empty list; name at least one layer")
        self.layers = [find_layer(model, spec) for spec in specs]
        self.layer_names = [name for name, _ in self.layers]
        if len(set(self.layer_names)) != len(self.layer_names):
            raise CamkitValueError(f"layer: {self.layer_names} names a layer twice")
        self.layout = Layout(layout, prefix_tokens, grid)
        self.model = model

    @property
    def layer_name(self) -> str:
        """The name of the (first) layer explained."""
        return self.layer_names[0]

    @abstractmethod
    def weights(self, context: LayerContext) -> Tensor:
        """Weights of the layer's channels, the one thing a method defines.

        Args:
            context: The layer's activations ``(N, 1, C, *spatial)``, the
                gradients ``(N, k, C, *spatial)`` when :attr:`needs_gradients`,
                and ways to re-score the model (see :class:`LayerContext`).

        Returns:
            Channel weights ``(N, k, C)`` or pixel weights ``(N, k, C, *spatial)``;
            the map is ``sum_c weights_c * A^c``.
        """

    def refine(self, maps: Tensor, context: LayerContext) -> Tensor:
        """Optionally transform a layer's signed map ``(N, k, *spatial)``; identity by default.

        Runs before the ReLU and the upsampling. Methods whose paper rescales the
        map (LayerCAM's tanh) override it; most never need to.
        """
        return maps

    def __call__(
        self,
        x: Tensor,
        target: Target = None,
        *,
        relu: bool = True,
        upsample: bool = True,
        normalize: bool = True,
        counterfactual: bool = False,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """Compute one map per sample (and target); see :meth:`explain` for the arguments.

        Returns:
            The maps, float32 on ``x``'s device, shape ``(N, *x.shape[2:])``
            (``(N, *layer spatial)`` with ``upsample=False``; ``(N, k, ...)``
            for ``k`` targets per sample).
        """
        return self.explain(
            x,
            target,
            relu=relu,
            upsample=upsample,
            normalize=normalize,
            counterfactual=counterfactual,
            eigen_smooth=eigen_smooth,
            aug_smooth=aug_smooth,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        ).maps

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        relu: bool = True,
        upsample: bool = True,
        normalize: bool = True,
        counterfactual: bool = False,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Run the model on ``x`` and explain ``target`` at the layer(s).

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: What to explain (see :mod:`camkit.targets`): ``None`` for
                each sample's predicted class, an ``int`` for one class, a
                sequence or 1-D integer tensor of one class per sample, a 2-D
                ``(N, k)`` integer tensor for ``k`` classes per sample, or a
                callable mapping the model output to ``(N,)`` or ``(N, k)`` scores.
            relu: Keep only positive evidence, ``ReLU(sum_c w_c A^c)``. With
                ``False`` the signed map is returned.
            upsample: Resize the map to ``x``'s spatial size by (bi/tri)linear
                interpolation (``align_corners=False``). With ``False`` the map
                keeps the layer's resolution (one layer only).
            normalize: Scale each map to min 0 and max 1 (a constant map becomes
                all zeros), after the ReLU and the upsampling.
            counterfactual: Negate the gradients (Selvaraju et al., Sec. 3.3):
                the map shows what speaks *against* the target. Gradient
                methods only.
            eigen_smooth: Replace ``sum_c w_c A^c`` by the projection of the
                weighted activations ``w_c A^c`` on their first principal
                direction over channels, which removes much of the noise.
            aug_smooth: Average the maps of ``x`` and of ``x`` flipped along its
                last axis (flipped back), a test-time augmentation.
            forward_args: Further positional inputs: the model runs as
                ``model(x, *forward_args, **forward_kwargs)``. Tensors whose first
                axis has the batch size are treated as per-sample inputs.
            forward_kwargs: Keyword inputs of the model, as ``forward_args``.

        Returns:
            The maps with the model output, scores and classes of the same pass.

        Raises:
            CamkitTypeError: For an input or target of the wrong type, or a layer
                whose output is not a floating-point tensor.
            CamkitValueError: For an empty batch, classes out of range, a wrong
                number of targets, a layer the forward pass never reaches, a
                score that does not depend on the layer, or options that do
                not fit the method.
        """
        if counterfactual and not self.needs_gradients:
            raise CamkitValueError(
                f"counterfactual: {type(self).__name__} does not use gradients; "
                f"counterfactual maps need a gradient method such as GradCAM"
            )
        if not upsample and len(self.layers) > 1:
            raise CamkitValueError(
                "upsample: fusing several layers needs upsample=True, since their maps "
                "have different resolutions"
            )
        with torch.inference_mode(False):
            options = _Options(
                relu,
                upsample,
                counterfactual,
                eigen_smooth,
                tuple(forward_args),
                dict(forward_kwargs or {}),
            )
            raw = self._explain(x, target, options)
            if aug_smooth:
                flipped = self._explain(x.flip(-1), target, options)
                raw = _Raw(
                    maps=(raw.maps + flipped.maps.flip(-1)) / 2,
                    layer_maps={
                        name: (m + flipped.layer_maps[name].flip(-1)) / 2
                        for name, m in raw.layer_maps.items()
                    },
                    output=raw.output,
                    bound=raw.bound,
                    scores=raw.scores,
                )
        return raw.result(normalize)

    def _explain(self, x: Tensor, target: Target, options: _Options) -> _Raw:
        batch_size = check_input(x)
        checked = check_target(target, batch_size)
        with eval_mode(self.model):
            capture, output = self._capture(x, options)
            natives = self._reached(capture)
            with torch.enable_grad():
                bound = bind_target(checked, output, batch_size)
                scores = bound.scores(output)
                _check_finite(scores, "target: the score", x)
                gradients = (
                    self._gradients(scores, natives)
                    if self.needs_gradients
                    else [None] * len(natives)
                )
            layer_maps: dict[str, Tensor] = {}
            for i, (name, native) in enumerate(zip(self.layer_names, natives, strict=True)):
                activations = self._channels_first(
                    native.detach(), name, batch_size, x, options.upsample
                )
                grads = gradients[i]
                if grads is not None:
                    grads = self._gradients_channels_first(grads, name)
                    if options.counterfactual:
                        grads = -grads
                context = LayerContext(
                    layer=name,
                    activations=activations.float()[:, None],
                    scores=scores.detach().float(),
                    classes=bound.classes,
                    inputs=x,
                    _gradients=grads,
                    _cam=self,
                    _target=bound,
                    _native=native.detach(),
                    _call=capture.calls[i],
                    _forward_args=options.forward_args,
                    _forward_kwargs=options.forward_kwargs,
                )
                maps = self._layer_map(context, options.eigen_smooth)
                _check_finite(maps, f"layer: the map of {name!r}")
                if options.relu:
                    maps = maps.clamp_min_(0)
                if options.upsample:
                    resized = _maps.upsample(maps.flatten(0, 1), tuple(x.shape[2:]))
                    maps = resized.view(batch_size, bound.k, *resized.shape[1:])
                layer_maps[name] = maps.to(x.device)
        fused = (
            next(iter(layer_maps.values()))
            if len(layer_maps) == 1
            else torch.stack([_scaled(m.clone()) for m in layer_maps.values()]).mean(0)
        )
        return _Raw(fused, layer_maps, detached(output), bound, scores.detach())

    def _capture(self, x: Tensor, options: _Options) -> tuple[LayerCapture, Any]:
        def run() -> Any:
            return forward(self.model, x, options.forward_args, options.forward_kwargs)

        return capture(self.layers, run)

    def _layer_map(self, context: LayerContext, eigen_smooth: bool) -> Tensor:
        weights = self.weights(context)
        activations = context.activations
        n, k = context.scores.shape
        channels = activations.shape[2]
        if weights.shape not in {(n, k, channels), (n, k, *activations.shape[2:])}:
            raise CamkitValueError(
                f"weights: {type(self).__name__}.weights returned shape {tuple(weights.shape)}; "
                f"expected ({n}, {k}, {channels}) or ({n}, {k}, {channels}, *spatial)"
            )
        spatial = activations.shape[3:]
        if weights.dim() == 3 and not eigen_smooth:  # one batched matrix product
            maps = (weights @ activations[:, 0].flatten(2)).view(n, k, *spatial)
            return self.refine(maps, context)
        if weights.dim() == 3:
            weights = weights.view(*weights.shape, *([1] * len(spatial)))
        weighted = weights * activations  # (N, k, C, *spatial)
        if eigen_smooth:
            maps = _maps.first_component(weighted.flatten(0, 1)).view(n, k, *spatial)
        else:
            maps = weighted.sum(dim=2)
        return self.refine(maps, context)

    def _reached(self, capture: LayerCapture) -> list[Tensor]:
        natives = []
        for name, activation in zip(self.layer_names, capture.activations, strict=True):
            if activation is None:
                raise CamkitValueError(
                    f"layer: {name!r} was not reached in the forward pass; "
                    f"choose a layer the model runs on this input"
                )
            natives.append(activation)
        return natives

    def _channels_first(
        self, native: Tensor, name: str, batch_size: int, x: Tensor, upsample: bool
    ) -> Tensor:
        activation = self.layout.to_channels_first(native, name)
        shape = tuple(activation.shape)
        if activation.dim() not in (3, 4, 5) or shape[0] != batch_size:
            raise CamkitValueError(
                f"layer: {name!r} returned shape {tuple(native.shape)}; a CAM needs "
                f"(N, C, L), (N, C, H, W) or (N, C, D, H, W) with N = {batch_size} "
                f"(or set layout= for token or channels-last outputs)"
            )
        if upsample and activation.dim() != x.dim():
            raise CamkitValueError(
                f"upsample: cannot resize the map of {name!r}, with "
                f"{activation.dim() - 2} spatial dims, to the input's "
                f"{tuple(x.shape[2:])}; pass upsample=False"
            )
        return activation

    def _gradients_channels_first(self, gradients: Tensor, name: str) -> Tensor:
        n, k = gradients.shape[:2]
        flat = self.layout.to_channels_first(gradients.flatten(0, 1), name)
        return flat.reshape(n, k, *flat.shape[1:]).float()

    def _gradients(self, scores: Tensor, activations: list[Tensor]) -> list[Tensor | None]:
        grads = score_gradients(scores, activations)
        for name, grad in zip(self.layer_names, grads, strict=True):
            if grad is None:
                raise CamkitValueError(
                    f"target: the score does not depend on layer {name!r}; "
                    f"choose a layer the score is computed from"
                )
        return grads


@dataclass(frozen=True)
class _Options:
    relu: bool
    upsample: bool
    counterfactual: bool
    eigen_smooth: bool
    forward_args: tuple[Any, ...]
    forward_kwargs: dict[str, Any]


def _check_finite(values: Tensor, what: str, x: Tensor | None = None) -> None:
    if bool(values.sum().isfinite()):  # one NaN or infinity makes the sum non-finite too
        return
    bad = ~torch.isfinite(values)  # the sum may also have overflowed: look closer
    if bool(bad.any()):
        if x is not None:
            check_finite_input(x)
        samples = sorted({int(i) for i in bad.nonzero()[:, 0]})[:5]
        raise CamkitValueError(
            f"{what} is NaN or infinite for sample(s) {samples}; the model overflows or "
            f"produces NaN on this input (in float16, try float32)"
        )


def _scaled(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``(N, k, *spatial)`` maps, in place (camkit's own tensors)."""
    _maps.min_max_normalize_(maps.view(-1, *maps.shape[2:]))
    return maps


@dataclass(frozen=True)
class _Raw:
    """Maps with their ``k`` axis, before scaling."""

    maps: Tensor
    layer_maps: dict[str, Tensor]
    output: Any
    bound: BoundTarget
    scores: Tensor

    def result(self, normalize: bool) -> CAMResult:
        def finish(maps: Tensor) -> Tensor:
            maps = _scaled(maps) if normalize else maps
            return maps if self.bound.multi else maps[:, 0]

        classes, scores = self.bound.classes, self.scores
        if not self.bound.multi:
            scores = scores[:, 0]
            classes = None if classes is None else classes[:, 0]
        maps = finish(self.maps)
        layer_maps = {  # a single layer's map is the result itself: finish it once, copy it
            name: maps.clone() if m is self.maps else finish(m)
            for name, m in self.layer_maps.items()
        }
        return CAMResult(maps, self.output, scores, classes, layer_maps)
