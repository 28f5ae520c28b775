"""The CAM base class: a method says how weights come from a layer; the base does the rest.

:meth:`BaseCAM.explain` reads as the pipeline of :mod:`camkit._engine.pipeline`:
validate the request, run the model with the layers hooked, score the
target, take the gradients at the layers, turn each layer's weights into a
map (:mod:`camkit._engine.layer_pass`), check the numbers once, finish.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

from torch import Tensor, fx, nn

from camkit._engine import detection, map_ops
from camkit._engine.augmenting import augmentations_of, averaged
from camkit._engine.finishing import FUSIONS, fused_and_scaled
from camkit._engine.layer_pass import layer_pass
from camkit._engine.layers import LayerRef, resolve_layer
from camkit._engine.layout import Layout
from camkit._engine.model import eager
from camkit._engine.network_after import trace
from camkit._engine.option_checks import flag
from camkit._engine.pipeline import CallOptions, Explained, Request, run_pass
from camkit.augment import Augmentation
from camkit.context import LayerContext
from camkit.errors import CamkitValueError
from camkit.explainer import Explainer, setting
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["BaseCAM", "LayerSpec"]

LayerSpec = str | nn.Module
"""A layer: its name in the model (a dotted module name, optionally with ``@call`` and
``[key]`` parts, see :mod:`camkit.layers`), or the module itself."""


class BaseCAM(Explainer):
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
    blocks call one ``ReLU`` two or three times, a siamese network its shared
    encoder once per branch), its *last* call, the one nearest the output, is
    explained by default; ``"encoder@0"`` names the first call, ``"encoder@1"``
    the second. A layer whose output is a tuple, list or dict is explained at
    one element of it: ``"backbone.body[0]"``, ``"fpn['pool']"`` (see
    :mod:`camkit.layers`).

    A layer's output is copied before it flows on only where the network
    modifies it in place. Every call checks the activation's version counter:
    if the network overwrote an uncopied activation, the call runs the model
    once more with a copy (and remembers to copy that layer's output from then
    on), so the map is always that of the intact activation.

    Args:
        model: Any :class:`torch.nn.Module`. It is not modified.
        layer: The layer to explain: a dotted name as in
            :meth:`torch.nn.Module.named_modules` (``"features.relu"``),
            optionally with a call and an element (``"encoder@0"``,
            ``"backbone.body[0]"``, see :mod:`camkit.layers`), or the module
            object; or a list of them, whose maps are fused (each layer's map
            upsampled to the input and scaled to [0, 1], then averaged), such
            as the levels of a feature pyramid. Each output must be a floating-point tensor of shape
            ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` in the given
            ``layout``.
        layout: ``"channels_first"`` (default), ``"channels_last"`` for
            ``(N, *spatial, C)`` outputs (Swin, ConvNeXt blocks),
            ``"tokens"`` for ``(N, T, C)`` transformer outputs, or
            ``"merged_tokens"`` for ``(L, C)`` outputs holding every sample's
            tokens on one axis in blocks of ``merge_size`` x ``merge_size``
            patches (Qwen2-VL's vision tower; see :doc:`/vision-language`).
        prefix_tokens: With ``layout="tokens"``: how many leading tokens (CLS,
            distillation) to drop before arranging the rest on a grid.
        grid: With ``layout="tokens"``: the token grid, such as ``(14, 14)``;
            inferred as a square when omitted. With ``"merged_tokens"``: each
            sample's patch grid, ``(h, w)`` or ``(t, h, w)`` (a row of Qwen2-VL's
            ``image_grid_thw``), the same for every sample.
        token_order: With ``layout="tokens"``: the grid's axes from the
            outermost to the innermost as the tokens run, where it is not
            row-major; ``(1, 2, 0)`` for TimeSformer's ``(t, h, w)`` grid, whose
            tokens give each patch's frames in turn.
        merge_size: With ``layout="merged_tokens"``: the side of the blocks of
            patches that run together (2 for Qwen2-VL's vision blocks, 1 for its
            merger's output on the merged grid).
        tiles: With ``layout="tokens"``: how many consecutive rows of the layer's
            output belong to one sample, the tiles of an image cut into tiles
            (LLaVA-NeXT, Idefics3); the maps get a tile axis, ``(N, tiles, h, w)``,
            and ``x`` is ``(N, C, tiles, H, W)`` (see :doc:`/vision-language`).
        fuse: How the maps of several layers become one, each first upsampled to
            the input and scaled to [0, 1]: ``"mean"`` (the default) or
            ``"product"``, which keeps only what every layer shows (the
            multi-layer refinement of :class:`~camkit.RefineCAM`); the fused
            map is scaled again.

    Raises:
        CamkitValueError: If the model has no such layer (the message lists
            the closest names), the list of layers is empty or repeats one, or
            the layout options are invalid.
        CamkitTypeError: If ``model`` or ``layer`` has the wrong type.
    """

    reports_output = True

    needs_gradients: ClassVar[bool] = True
    """Whether :meth:`weights` uses :attr:`LayerContext.gradients`."""

    split_tail: bool = True
    """Whether :meth:`LayerContext.score_activations` runs only the part of the network after
    the layer, where the model was traced by :mod:`torch.fx` (see :meth:`trace_layers`) and
    can be split there (checked against the model's scores before use); ``False`` always
    re-runs the whole model. The scores agree either way."""

    needs_hessian: ClassVar[bool] = False
    """Whether :meth:`weights` uses :meth:`LayerContext.hessian_times` (second derivatives of
    the score at the layer; the gradients are then taken with ``create_graph=True``)."""

    differentiable: ClassVar[bool] = True
    """Whether the method offers ``explain(..., differentiable=True)``: maps that stay in the
    autograd graph (a method whose weights come from re-running the model does not)."""

    layer_resolution: bool = True
    """A CAM's maps can stay at the layer's resolution (``upsample=False``), with one layer."""

    differentiable_maps: ClassVar[bool] = True
    """The name :attr:`differentiable` had before the explainer contract; setting either on a
    subclass sets both."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "differentiable_maps" in cls.__dict__:  # a subclass written for the old name
            cls.differentiable = bool(cls.__dict__["differentiable_maps"])
        cls.differentiable_maps = cls.differentiable

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | Sequence[LayerSpec],
        *,
        layout: str = "channels_first",
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
        token_order: tuple[int, ...] | None = None,
        merge_size: int = 1,
        tiles: int = 1,
        fuse: str = "mean",
    ) -> None:
        model = eager(model)  # a torch.compile'd model: its eager module, the same maps
        specs = list(layer) if isinstance(layer, (list, tuple)) else [cast(LayerSpec, layer)]
        if not specs:
            raise CamkitValueError("layer: got an empty list; name at least one layer")
        self.layers: list[LayerRef] = [resolve_layer(model, spec) for spec in specs]
        self.layer_names = [ref.name for ref in self.layers]
        self.layer_resolution = len(self.layers) == 1
        places = [(id(ref.module), ref.call, ref.keys) for ref in self.layers]
        if len(set(places)) != len(places):
            raise CamkitValueError(f"layer: {self.layer_names} names a layer twice")
        self.layout = Layout(layout, prefix_tokens, grid, token_order, merge_size, tiles)
        self.model = model
        if fuse not in FUSIONS:
            raise CamkitValueError(f"fuse: got {fuse!r}; allowed: {', '.join(map(repr, FUSIONS))}")
        self.fuse = fuse
        self._traced: dict[int, fx.Graph | None] = {}
        self._box_heads = detection.box_heads(model)

    def settings(self) -> dict[str, Any]:
        """The method, the layers, and the layout and fusion options (see
        :meth:`Explainer.settings`); methods with options of their own add them."""
        layout = self.layout
        return {
            **super().settings(),
            "layout": layout.kind,
            "prefix_tokens": layout.prefix_tokens,
            "grid": setting(layout.grid),
            "token_order": setting(layout.token_order),
            "merge_size": layout.merge_size,
            "tiles": layout.tiles,
            "fuse": self.fuse,
        }

    def trace_layers(self) -> None:
        """Trace the model with :mod:`torch.fx` once, so that re-scoring with a layer's output
        replaced can run only the network after the layer (Ablation-CAM calls it when built).

        fx patches ``torch.nn.Module.__call__`` for the whole process while it traces, so
        no forward pass may run in another thread meanwhile: trace before starting threads.
        """
        self._traced = {id(ref): trace(self.model, ref) for ref in self.layers}

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

    def combine(self, weighted: Tensor) -> Tensor:
        """Turn weighted activations ``w_c A^c`` ``(B, C, *spatial)`` into maps ``(B, *spatial)``;
        their sum over channels by default.

        Methods whose map is not a sum (the principal component of Eigen-Grad-CAM,
        the kernel principal component of KPCA-CAM) override it;
        ``eigen_smooth=True`` replaces it by the first principal component.
        """
        return weighted.sum(dim=1)

    def refine(self, maps: Tensor, context: LayerContext) -> Tensor:
        """Optionally transform a layer's signed map ``(N, k, *spatial)``; identity by default.

        Runs before the ReLU and the upsampling. Methods whose paper rescales the
        map (LayerCAM's tanh) override it; most never need to.
        """
        return maps

    def target_for(self, target: Target) -> Target:
        """The target actually explained for the ``target`` a caller passes; the target itself
        by default. Methods that define their own score (Finer-CAM) override it."""
        return target

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
        augment: Sequence[Augmentation] = (),
        differentiable: bool = False,
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
            normalize: Scale each map to min 0 and max 1, after the ReLU and the
                upsampling. A constant map, or one constant up to rounding (its
                range within 16 units of rounding of its largest magnitude),
                becomes all zeros.
            counterfactual: Negate the gradients (Selvaraju et al., Sec. 3.3):
                the map shows what speaks *against* the target. Gradient
                methods only.
            eigen_smooth: Replace ``sum_c w_c A^c`` by the projection of the
                weighted activations ``w_c A^c`` on their first principal
                direction over channels, which removes much of the noise.
            aug_smooth: Average the maps of ``x`` and of ``x`` flipped along its
                last axis (flipped back), a test-time augmentation: the same as
                ``augment=[camkit.augment.horizontal_flip]``.
            augment: Test-time augmentations (see :mod:`camkit.augment`): the map
                is the mean of ``x``'s map and of each augmented copy's map,
                brought back to ``x``'s frame by the augmentation's inverse.
                Every copy explains the classes explained on ``x``.
            differentiable: Keep the maps in the autograd graph, for a loss on
                them during training (see the "Training with explanations"
                page). The whole forward pass is recorded, the gradients at the
                layer are taken with ``create_graph=True``, and ReLU,
                upsampling and scaling stay differentiable; a loss on the maps
                back-propagates to the parameters (and to ``x``, if it requires
                grad). The model runs in the mode the caller set (train mode
                keeps BatchNorm's batch statistics and Dropout), once, under
                any ``torch.autocast`` in force; ``output`` and ``scores`` of
                the result keep their graph, so the task loss and the
                explanation loss share the forward pass. Scaling divides by
                ``max(max L - min L, 1e-6)``, which equals the default
                scaling unless a map is (nearly) constant. The values equal
                those of the default path; float64 layers give float64 maps.
            forward_args: Further positional inputs: the model runs as
                ``model(x, *forward_args, **forward_kwargs)``. Tensors whose first
                axis has the batch size are treated as per-sample inputs.
            forward_kwargs: Keyword inputs of the model, as ``forward_args``.

        Returns:
            The maps with the model output, scores and classes of the same pass.

        Raises:
            CamkitTypeError: For an input or target of the wrong type, an on/off
                option that is not a bool, ``forward_args`` that are not a tuple or
                list, or a layer whose output is not a floating-point tensor.
            CamkitValueError: For an empty batch, classes out of range, a wrong
                number of targets, a layer the forward pass never reaches, a
                score that does not depend on the layer, or options that do
                not fit the method (``differentiable=True`` for a method that
                re-runs the model).
        """
        for name, value in (("relu", relu), ("normalize", normalize),
                            ("counterfactual", counterfactual), ("eigen_smooth", eigen_smooth),
                            ("aug_smooth", aug_smooth)):  # fmt: skip
            flag(value, name)
        if counterfactual and not self.needs_gradients:
            raise CamkitValueError(
                f"counterfactual: {type(self).__name__} does not use gradients; "
                f"counterfactual maps need a gradient method such as GradCAM"
            )
        augmentations = augmentations_of(augment, aug_smooth)
        if aug_smooth and not getattr(target, "flip_invariant", True):
            raise CamkitValueError(
                f"aug_smooth: the target {target!r} scores pixel or box positions, which the "
                f"flip of aug_smooth moves; explain without aug_smooth"
            )
        moving = [a.name for a in augmentations if a.moves_pixels]
        if moving and not getattr(target, "flip_invariant", True):
            raise CamkitValueError(
                f"augment: the target {target!r} scores pixel or box positions, which "
                f"{moving} move; use photometric augmentations only, or none"
            )
        if not upsample and len(self.layers) > 1:
            raise CamkitValueError(
                "upsample: fusing several layers needs upsample=True, since their maps "
                "have different resolutions"
            )
        options = CallOptions(relu, upsample, counterfactual, eigen_smooth, differentiable)
        return run_pass(
            self,
            x,
            self.target_for(target),
            lambda request: self._explained(request, options, normalize, augmentations),
            upsample=upsample,
            differentiable=differentiable,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        )

    def _explained(
        self,
        request: Request,
        options: CallOptions,
        normalize: bool,
        augmentations: list[Augmentation],
    ) -> Explained:
        """The finished maps of one call (with its augmented copies, if any)."""
        run = layer_pass(self, request, options)
        layer_maps = run.layer_maps
        if augmentations:
            layer_maps = averaged(
                request,
                layer_maps,
                run.target,
                augmentations,
                lambda copy: layer_pass(self, copy, options).layer_maps,
            )
        maps, layer_maps = fused_and_scaled(
            layer_maps, normalize, options.differentiable, self.fuse
        )
        return Explained(maps, layer_maps, run.output, run.target, run.scores)

    def _layer_map(self, context: LayerContext, eigen_smooth: bool) -> Tensor:
        """The signed maps ``(N, k, *spatial)`` of one layer: the method's weights, applied."""
        weights = self.weights(context)
        activations = context.activations
        n, k = context.scores.shape
        channels = activations.shape[2]
        if weights.shape not in ((n, k, channels), (n, k, *activations.shape[2:])):
            raise CamkitValueError(
                f"weights: {type(self).__name__}.weights returned shape {tuple(weights.shape)}; "
                f"expected ({n}, {k}, {channels}) or ({n}, {k}, {channels}, *spatial)"
            )
        combine = None if type(self).combine is BaseCAM.combine else self.combine
        if eigen_smooth:
            combine = map_ops.first_component
        return self.refine(map_ops.channel_maps(weights, activations, combine), context)
