"""LeGrad: the positive gradient of the score with respect to each layer's attention map."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import capture
from camkit._engine.layers import resolve_layer
from camkit._engine.layout import Layout
from camkit._engine.model import eager
from camkit._engine.pipeline import Explained, Request, bind_and_score, gradients_at, run_pass
from camkit.base import LayerSpec
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer, setting
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["LeGrad"]


class LeGrad(Explainer):
    r"""LeGrad: gradients with respect to the attention maps of a vision transformer.

    Bousselham et al., *LeGrad: An Explainability Method for Vision
    Transformers via Feature Formation Sensitivity*, ICCV 2025,
    https://arxiv.org/abs/2404.03214.

    With :math:`A^l` the attention probabilities of layer :math:`l`
    (``(heads, T, T)`` per sample, softmax over the keys) and :math:`s^l` the
    target's score computed from that layer's tokens (the model's own head
    applied to the block's output, when ``blocks`` and ``head`` are given, as
    in the paper; otherwise the model's output score),

    .. math::

        E^l = \frac{1}{H\, T} \sum_{h} \sum_{i}
            \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial A^l_{h,i,:}}\Big),
        \qquad
        L = \sum_l E^l,

    the mean over heads and query tokens of the positive gradient, a relevance
    per key token. The prefix (CLS) tokens are dropped, the patch tokens laid
    on their grid, the map upsampled to the input and scaled to [0, 1].

    The attention probabilities must be the output of a module camkit can
    hook: for timm's ViTs, ``blocks.{i}.attn.attn_drop`` once ``fused_attn`` is
    off (the fused kernel never forms them); in a model of your own, an
    ``nn.Identity`` applied to the softmax. The paper explains the last layers
    (two by default in its code); pass their attention modules.

    Args:
        model: The vision transformer; it is not modified.
        attentions: The modules (names or objects) whose outputs are the
            attention probabilities ``(N, heads, T, T)`` of the layers to use.
        blocks: The blocks whose outputs ``(N, T, D)`` are the layers' tokens,
            one per attention module; with ``head``, each layer is scored on its
            own tokens.
        head: ``head(tokens) -> output``: the model's final norm and head applied
            to a block's tokens, such as ``lambda t: vit.forward_head(vit.norm(t))``
            for timm; the target is read from that output as from the model's.
        prefix_tokens: Tokens before the patches (CLS, distillation).
        grid: The token grid, such as ``(14, 14)``; inferred as a square when omitted.

    Raises:
        CamkitValueError: If no attention module is given, or ``blocks`` and
            ``head`` are not given together and alike in number.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Attention(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.qkv, self.probs = nn.Linear(8, 24), nn.Identity()
        ...     def forward(self, x):
        ...         q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        ...         attn = self.probs((q @ k.transpose(-1, -2) / 2).softmax(-1))
        ...         return (attn @ v).transpose(1, 2).flatten(2)
        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.attn = nn.Conv2d(1, 8, 4, 4), Attention()
        ...         self.head = nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         tokens = self.embed(x).flatten(2).transpose(1, 2)
        ...         tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1)
        ...         return self.head(self.attn(tokens)[:, 0])
        >>> LeGrad(Tiny(), ["attn.probs"])(torch.randn(2, 1, 16, 16), target=1).shape
        torch.Size([2, 16, 16])
    """

    reports_output = True

    not_differentiable_because = "its attention gradients are taken without a graph of their own"
    layer_resolution = True

    def __init__(
        self,
        model: nn.Module,
        attentions: Sequence[LayerSpec],
        *,
        blocks: Sequence[LayerSpec] | None = None,
        head: Callable[[Tensor], Any] | None = None,
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(attentions, Sequence) or isinstance(attentions, str) or not attentions:
            raise CamkitValueError(
                f"attentions: got {attentions!r}; allowed: a non-empty list of the modules "
                f"whose outputs are attention probabilities"
            )
        if (blocks is None) != (head is None):
            raise CamkitValueError(
                "blocks: blocks and head go together (each layer scored on its own tokens) "
                "or not at all (every layer scored on the model's output)"
            )
        if blocks is not None and (not isinstance(blocks, Sequence) or isinstance(blocks, str)):
            raise CamkitTypeError(
                f"blocks: got {type(blocks).__name__}; allowed: a list of the blocks (names or "
                f"modules), one per attention module"
            )
        if blocks is not None and len(blocks) != len(attentions):
            raise CamkitValueError(
                f"blocks: got {len(blocks)} for {len(attentions)} attention modules; "
                f"give one block per attention module"
            )
        if head is not None and not callable(head):
            raise CamkitTypeError(f"head: got {type(head).__name__}; allowed: a callable")
        model = eager(model)
        self.model = model
        self.attentions = [resolve_layer(model, spec) for spec in attentions]
        self.blocks = [] if blocks is None else [resolve_layer(model, spec) for spec in blocks]
        self.head = head
        self.layout = Layout("tokens", prefix_tokens, grid)
        self.layer_names = [ref.name for ref in self.attentions]

    def settings(self) -> dict[str, Any]:
        """The method, the attention layers, and ``blocks``, ``head``, ``prefix_tokens``,
        ``grid``."""
        return {
            **super().settings(),
            "blocks": [ref.name for ref in self.blocks],
            "head": setting(self.head),
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
        """Run the model on ``x`` and sum each layer's positive attention gradients.

        Args:
            x: The input images ``(N, C, H, W)``.
            target: As for :meth:`camkit.BaseCAM.explain`; with ``head``, each
                layer's score is that target read from ``head``'s output (class
                targets keep the classes of the model's output).
            upsample: Resize the map from the token grid to the input; with
                ``False`` it stays on the grid.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The maps (scaled to [0, 1]) with the output, scores and classes;
            ``layer_maps`` holds each layer's :math:`E^l` on the token grid.

        Raises:
            CamkitValueError: For a bad input or target, an attention module the
                forward pass does not reach or whose output is not
                ``(N, heads, T, T)``, or a score that does not depend on it.
        """
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
        refs = [*self.attentions, *self.blocks]
        hooked, output = capture(refs, lambda: request.run(self.model))
        captured = []
        for index, ref in enumerate(refs):
            call = hooked.captured(index)
            if call is None:
                raise CamkitValueError(
                    f"attentions: {ref.name!r} was not reached in the forward pass"
                )
            captured.append(call.activation)
        attention, tokens = captured[: len(self.attentions)], captured[len(self.attentions) :]
        for name, probs in zip(self.layer_names, attention, strict=True):
            if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2]:
                raise CamkitValueError(
                    f"attentions: {name!r} returned shape {tuple(probs.shape)}; "
                    f"attention probabilities are (N, heads, T, T)"
                )
        labels = [f"attention {name!r}" for name in self.layer_names]
        with torch.enable_grad():
            bound, scores = bind_and_score(request, output)
            if self.head is None:  # one score for every layer: one backward pass
                gradients = gradients_at(scores, attention, labels)
            else:  # each layer's own score, through the head
                gradients = [
                    gradients_at(bound.scores(self._head(request, t)), [probs], [label])[0]
                    for t, probs, label in zip(tokens, attention, labels, strict=True)
                ]
        layer_maps = {
            name: self._grid(g.detach().float().clamp_min(0).mean(dim=(2, 3)), name)
            for name, g in zip(self.layer_names, gradients, strict=True)
        }  # each (N, k, h, w)
        total = torch.stack(list(layer_maps.values())).sum(0)
        x = request.x
        if upsample and total.dim() == x.dim():
            resized = map_ops.upsample(total.flatten(0, 1), tuple(x.shape[2:]))
            total = resized.reshape(*total.shape[:2], *resized.shape[1:])
        maps = map_ops.scale_maps_(total.contiguous())
        return Explained(maps, layer_maps, output, bound, scores)

    def _head(self, request: Request, tokens: Tensor) -> Any:
        """The model's head on a block's tokens, in the caller's precision like the model."""
        head = cast(Callable[[Tensor], Any], self.head)
        with request.precision.callers():
            return head(tokens)

    def _grid(self, relevance: Tensor, name: str) -> Tensor:
        """Per-key-token relevance ``(N, k, T)`` on the patch grid ``(N, k, h, w)``."""
        n, k, tokens = relevance.shape
        grid = self.layout.to_channels_first(relevance.reshape(n * k, tokens, 1), name)
        return grid.reshape(n, k, *grid.shape[2:])
