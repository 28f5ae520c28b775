"""Deep Feature Factorization: the concepts a layer holds, found without any target."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import Hooks
from camkit._engine.layers import resolve_layer
from camkit._engine.layout import Layout
from camkit._engine.model import eager, eval_mode
from camkit._engine.option_checks import positive_int, seed_or_none
from camkit._engine.pipeline import Explained, Request, bind_and_score, run_pass
from camkit.base import LayerSpec
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer, setting
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["DeepFeatureFactorization", "Factorization"]


@dataclass(frozen=True)
class Factorization:
    """What :class:`DeepFeatureFactorization` found in a batch.

    Attributes:
        maps: Where each concept is, ``(N, K, *spatial)``: the factor :math:`H`,
            upsampled to the input (unless ``upsample=False``) and scaled to
            [0, 1] per sample and concept.
        concepts: The concepts as directions in the layer's channel space,
            ``(C, K)``: the factor :math:`W` plus the offset removed before the
            factorization.
        scores: ``head`` applied to each concept, ``(K, ...)`` (such as the class
            scores a concept alone would get), or ``None`` without a head.
        error: The relative reconstruction error :math:`\\|V - WH\\|_F / \\|V\\|_F`.
    """

    maps: Tensor
    concepts: Tensor
    scores: Tensor | None
    error: float


class DeepFeatureFactorization(Explainer):
    r"""Deep Feature Factorization: non-negative matrix factorization of a layer's activations.

    Collins et al., *Deep Feature Factorization for Concept Discovery*, ECCV
    2018, https://arxiv.org/abs/1806.10206.

    The activations of a whole batch, arranged as a (channels x positions)
    matrix and shifted per channel to be non-negative (:math:`V = A - \min A`,
    as pytorch-grad-cam does), are factorized as

    .. math::

        V \approx W H, \qquad W \ge 0 \in \mathbb{R}^{C \times K},\;
        H \ge 0 \in \mathbb{R}^{K \times N P},

    by Lee and Seung's multiplicative updates for the Frobenius norm, from a
    seeded random start. Each row of :math:`H` says where one of the :math:`K`
    concepts is, in every image of the batch at once; each column of :math:`W`
    (plus the shift) is the concept's direction in channel space, which a
    ``head`` (the layers after the explained one) turns into scores, so that a
    concept can be named by the classes it votes for. No target, no
    gradients: one forward pass up to the layer.

    As an explainer (:meth:`explain`, ``__call__``), each sample's map for a
    class is the map of the concept that votes most for that class (the
    largest of ``head``'s scores for it), which needs a ``head``;
    :meth:`factorize` returns everything the factorization found.

    NMF has many solutions; camkit's are not pytorch-grad-cam's (scikit-learn's
    coordinate descent) value for value, but both minimize the same objective
    (the tests check the reconstruction and that planted concepts are found).

    Args:
        model: Any :class:`torch.nn.Module`; it is not modified.
        layer: The layer to factorize, as for :class:`~camkit.BaseCAM` (one layer).
        concepts: :math:`K`, the number of concepts.
        head: Optional ``head(directions) -> scores`` applied to the concepts
            ``(K, C)``, such as the classifier after a global pooling.
        iterations: Multiplicative updates to run.
        seed: Seed of the random start.
        layout: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.
        prefix_tokens: As for :class:`~camkit.BaseCAM`.
        grid: As for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> dff = DeepFeatureFactorization(model, "1", concepts=2)
        >>> found = dff.factorize(torch.randn(3, 1, 8, 8))
        >>> found.maps.shape, found.concepts.shape
        (torch.Size([3, 2, 8, 8]), torch.Size([4, 2]))
    """

    reports_output = True

    not_differentiable_because = "its factorization runs iterative updates outside the graph"
    layer_resolution = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec,
        *,
        concepts: int = 5,
        head: Callable[[Tensor], Tensor] | None = None,
        iterations: int = 300,
        seed: int = 0,
        layout: str = "channels_first",
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
    ) -> None:
        if isinstance(layer, (list, tuple)):
            raise CamkitTypeError(
                f"layer: got {len(layer)} layers; Deep Feature Factorization takes one"
            )
        model = eager(model)
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.concepts = positive_int(concepts, "concepts")
        if head is not None and not callable(head):
            raise CamkitTypeError(f"head: got {type(head).__name__}; allowed: a callable or None")
        self.head = head
        self.iterations = positive_int(iterations, "iterations")
        self.seed = seed_or_none(seed)
        self.layout = Layout(layout, prefix_tokens, grid)
        self.layer_names = [self.layer.name]

    def settings(self) -> dict[str, Any]:
        """The method, the layer, and ``concepts``, ``head``, ``iterations``, ``seed``,
        ``layout``, ``prefix_tokens``, ``grid``."""
        return {
            **super().settings(),
            "concepts": self.concepts,
            "head": setting(self.head),
            "iterations": self.iterations,
            "seed": self.seed,
            "layout": self.layout.kind,
            "prefix_tokens": self.layout.prefix_tokens,
            "grid": setting(self.layout.grid),
        }

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
        """Each sample's map of the concept that votes most for ``target``'s class.

        Args:
            x: The input batch ``(N, C, *spatial)``, factorized as a whole.
            target: Classes, as for :meth:`camkit.BaseCAM.explain` (not a callable).
            upsample: Resize the concept maps to ``x``'s spatial size.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The chosen concept's map per sample (and class), with the output,
            scores and classes of the model; ``layer_maps`` holds the same maps
            under the layer's name (:meth:`factorize` gives every concept's).

        Raises:
            CamkitValueError: Without a ``head``, for a callable target, or for
                the errors of :meth:`factorize`.
        """
        if self.head is None:
            raise CamkitValueError(
                "head: Deep Feature Factorization explains a class by the concept that votes "
                "most for it, which needs head= (the layers after the explained one); "
                "factorize(x) gives the concepts without one"
            )
        return run_pass(
            self,
            x,
            target,
            lambda request: self._explained(request, upsample),
            upsample=upsample,
            differentiable=differentiable,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        )

    def _explained(self, request: Request, upsample: bool) -> Explained:
        if request.target.function is not None:
            raise CamkitTypeError(
                "target: Deep Feature Factorization picks concepts by their class votes, so it "
                "needs class indices or None, not a callable"
            )
        found, output = self._factorized(request, upsample)
        bound, scores = bind_and_score(request, output)
        classes = cast(Tensor, bound.classes)  # (N, k)
        votes = cast(Tensor, found.scores)  # (K, classes)
        if votes.dim() != 2 or votes.shape[0] != self.concepts:
            raise CamkitValueError(
                f"head: returned shape {tuple(votes.shape)} for {self.concepts} concepts; "
                f"expected ({self.concepts}, classes)"
            )
        best = votes[:, classes.to(votes.device)].argmax(dim=0)  # (N, k)
        rows = torch.arange(len(classes), device=found.maps.device)[:, None]
        maps = found.maps[rows, best.to(found.maps.device)]  # (N, k, *spatial)
        return Explained(maps, {self.layer.name: maps}, output, bound, scores)

    def factorize(
        self,
        x: Tensor,
        *,
        upsample: bool = True,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Factorization:
        """Factorize the layer's activations on the batch ``x``.

        Args:
            x: The input batch ``(N, C, *spatial)``.
            upsample: Resize the concept maps to ``x``'s spatial size.
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The concept maps, directions and (with a head) scores.

        Raises:
            CamkitValueError: If the layer is not reached, its output has the
                wrong shape, or there are more concepts than channels.
        """
        request = Request.check(x, None, forward_args, forward_kwargs)
        with torch.inference_mode(False), eval_mode(self.model), request.precision.full():
            return self._factorized(request, upsample)[0]

    def _factorized(self, request: Request, upsample: bool) -> tuple[Factorization, Any]:
        """The factorization of the batch, and the model output (run in eval mode)."""
        x = request.x
        recorder = _Recorder(self.layer.name, self.layer.module)
        with torch.no_grad(), recorder:
            output = request.run(self.model)
        outputs = recorder.outputs
        if not outputs:
            raise CamkitValueError(
                f"layer: {self.layer.name!r} was not reached in the forward pass"
            )
        try:
            native = self.layer.select(outputs[self.layer.call])
        except IndexError:
            raise CamkitValueError(
                f"layer: {self.layer.name!r} asks for call {self.layer.call}, but the layer "
                f"ran {len(outputs)} time(s)"
            ) from None
        activations = self.layout.to_channels_first(native, self.layer.name).float()
        n, channels = activations.shape[:2]
        if activations.dim() not in (3, 4, 5) or n != len(x):
            raise CamkitValueError(
                f"layer: {self.layer.name!r} returned shape {tuple(native.shape)}; Deep Feature "
                f"Factorization needs (N, C, *spatial) with N = {len(x)}"
            )
        if self.concepts > channels:
            raise CamkitValueError(
                f"concepts: got {self.concepts}; the layer has only {channels} channels"
            )
        spatial = activations.shape[2:]
        matrix = activations.transpose(0, 1).reshape(channels, -1).double()  # (C, N P)
        offset = matrix.amin(dim=1, keepdim=True)
        w, h, error = nmf(matrix - offset, self.concepts, self.iterations, self.seed)
        maps = h.view(self.concepts, n, *spatial).transpose(0, 1).float().contiguous()
        if upsample and activations.dim() == x.dim():
            resized = map_ops.upsample(maps.flatten(0, 1), tuple(x.shape[2:]))
            maps = resized.view(n, self.concepts, *resized.shape[1:])
        maps = map_ops.scale_maps_(maps.contiguous())
        directions = (w + offset).float()
        scores = None
        if self.head is not None:
            with torch.no_grad(), request.precision.callers():  # part of the model
                # in the layer's own precision, as the head receives the layer's output
                scores = self.head(directions.T.to(native.dtype).contiguous()).float()
        return Factorization(maps, directions, scores, error), output


class _Recorder(Hooks):
    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__([(name, module)])
        self.outputs: list[Any] = []

    def on_output(self, index: int, output: Any) -> Any:
        self.outputs.append(output)
        return None


def nmf(v: Tensor, rank: int, iterations: int, seed: int | None) -> tuple[Tensor, Tensor, float]:
    """Non-negative ``v (m, n) ~ w (m, rank) @ h (rank, n)`` by multiplicative updates.

    Lee & Seung, *Algorithms for Non-negative Matrix Factorization*, NIPS 2001:
    each update keeps the factors non-negative and never increases
    :math:`\\|V - WH\\|_F`. The start is scikit-learn's "random" one,
    :math:`\\sqrt{\\bar V / r}\\,|z|` with :math:`z` standard normal. Returns the
    factors and the relative error :math:`\\|V - WH\\|_F / \\|V\\|_F`.
    """
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    scale = float(v.mean().clamp_min(0) / rank) ** 0.5
    w = (scale * torch.randn(v.shape[0], rank, generator=generator, dtype=v.dtype)).abs()
    h = (scale * torch.randn(rank, v.shape[1], generator=generator, dtype=v.dtype)).abs()
    w, h = w.to(v.device), h.to(v.device)
    tiny = torch.finfo(v.dtype).tiny
    for _ in range(iterations):
        h = h * (w.T @ v) / (w.T @ w @ h).clamp_min(tiny)
        w = w * (v @ h.T) / (w @ (h @ h.T)).clamp_min(tiny)
    norm = float(torch.linalg.norm(v))
    error = float(torch.linalg.norm(v - w @ h)) / norm if norm > 0 else 0.0
    return w, h, error
