"""Grad-ECLIP: the last attention block of a CLIP-style image encoder, read through the
gradient of an image-text similarity at its class token."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import Hooks
from camkit._engine.model import eager, eval_mode
from camkit._engine.pipeline import Explained, Request, bind_and_score, gradients_at, run_pass
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.layers import resolve_layer
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["GradECLIP", "text_relevance"]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
"""The submodules an attention block must have (Hugging Face's CLIP, SigLIP and others)."""


class _Attention(Hooks):
    """Records the queries, keys and values, and makes the input of ``out_proj`` (the heads'
    concatenated output) a leaf that the rest of the forward pass records from."""

    watches_inputs = True

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__(modules)
        self.outputs: dict[int, Tensor] = {}
        self.attended: Tensor | None = None

    def on_output(self, index: int, output: Any) -> Any:
        if index < 3 and isinstance(output, Tensor):
            self.outputs[index] = output.detach()
        return None

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        if index != 3:
            return None
        torch.set_grad_enabled(True)
        self.attended = args[0].detach().requires_grad_(True)
        return (self.attended, *args[1:])


class GradECLIP(Explainer):
    r"""Grad-ECLIP: which image patches make a CLIP-style image embedding match a text.

    Zhao et al., *Gradient-based Visual Explanation for Transformer-based CLIP*,
    ICML 2024, https://arxiv.org/abs/2402.04758 (code:
    github.com/Cyang-Zhao/Grad-Eclip). In the image encoder's last attention
    block, with :math:`g` the gradient of the score (an image-text similarity,
    :class:`~camkit.SimilarityTarget`) at the class token's attention output
    (the heads' concatenated output, before ``out_proj``), :math:`v_i` patch
    :math:`i`'s values and :math:`\lambda_i` the cosine between the class
    token's query and patch :math:`i`'s key (both passed through ``out_proj``,
    as the authors' code does), min-max scaled over the patches:

    .. math::

        H_i = \operatorname{ReLU}\Big(\lambda_i \sum_d g_d\, v_{i,d}\Big).

    The authors' code recomputes the last block with a single attention head;
    camkit takes the gradient through the model's own attention, so the map
    explains the model as it is. Maps ``(N, H, W)`` on the patch grid
    (``upsample=False``) or upsampled bilinearly to the image, scaled to [0, 1].

    Args:
        model: A module whose output the target scores, such as a Hugging Face
            ``CLIPVisionModelWithProjection`` (its ``image_embeds``).
        attention: The last attention block of the image encoder, with
            ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` submodules
            (``"vision_model.encoder.layers.11.self_attn"``).
        prefix_tokens: Leading tokens before the patches (1: the class token).
        grid: The patch grid ``(h, w)``; a square when omitted.

    Raises:
        CamkitValueError: If ``attention`` lacks one of the projections.

    Example:
        >>> import torch
        >>> from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        >>> from camkit import SimilarityTarget
        >>> config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32,
        ...     intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        ...     projection_dim=16)
        >>> vision = CLIPVisionModelWithProjection(config).eval()
        >>> text = torch.randn(16)  # a text's embedding, from the text encoder
        >>> explainer = GradECLIP(vision, "vision_model.encoder.layers.1.self_attn")
        >>> explainer(torch.randn(2, 3, 32, 32), SimilarityTarget(text, key="image_embeds")).shape
        torch.Size([2, 32, 32])
    """

    not_differentiable_because = (
        "its maps are read from one block's queries, keys and values, recorded without gradients"
    )
    layer_resolution = True

    def __init__(
        self,
        model: nn.Module,
        attention: str,
        *,
        prefix_tokens: int = 1,
        grid: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = eager(model)
        block = resolve_layer(self.model, attention).module
        missing = [p for p in PROJECTIONS if not isinstance(getattr(block, p, None), nn.Linear)]
        if missing:
            raise CamkitValueError(
                f"attention: {attention!r} ({type(block).__name__}) has no {', '.join(missing)} "
                f"linear layer(s); name an attention block with q_proj, k_proj, v_proj and "
                f"out_proj, such as a CLIP encoder layer's self_attn"
            )
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int):
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens!r}; allowed: an int >= 0")
        if prefix_tokens < 0:
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens}; allowed: an int >= 0")
        self.block = block
        self.layer_names = [attention]
        self.prefix_tokens = prefix_tokens
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))

    def settings(self) -> dict[str, Any]:
        """The method, the attention block, ``prefix_tokens`` and ``grid``."""
        grid = None if self.grid is None else list(self.grid)
        return {**super().settings(), "prefix_tokens": self.prefix_tokens, "grid": grid}

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
        """Run the model on ``x`` and map ``target``'s score onto the image patches.

        Args:
            x: The images ``(N, C, H, W)``.
            target: What to explain, usually a :class:`~camkit.SimilarityTarget`
                of text embeddings (``k`` texts per image give ``k`` maps).
            upsample: Maps at the image's resolution (``True``) or the patch grid's.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The maps, scaled to [0, 1], with the output, scores and classes.

        Raises:
            CamkitTypeError: For an input or target of the wrong type.
            CamkitValueError: For a score that does not depend on the block, a token
                count that is not the grid's, ``differentiable=True``.
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
        modules = [(p, getattr(self.block, p)) for p in PROJECTIONS]
        with _Attention(modules) as hooks, torch.no_grad():
            output = request.run(self.model, request.x)
            bound, scores = bind_and_score(request, output)
            if hooks.attended is None or len(hooks.outputs) != 3:
                raise CamkitValueError(
                    f"attention: {self.layer_names[0]!r} did not run in the forward pass"
                )
            (gradient,) = gradients_at(scores, [hooks.attended], [f"{self.layer_names[0]!r}"])
        with torch.no_grad():
            maps = self._patch_maps(hooks.outputs, gradient, request, upsample)
        return Explained(maps, {}, output, bound, scores)

    def _patch_maps(
        self, outputs: dict[int, Tensor], gradient: Tensor, request: Request, upsample: bool
    ) -> Tensor:
        """The maps from the block's queries, keys, values and the class token's gradient."""
        queries, keys, values = (outputs[i].float() for i in range(3))
        out_proj = cast(nn.Linear, self.block.get_submodule("out_proj"))  # checked when built
        p = self.prefix_tokens
        query = F.normalize(F.linear(queries[:, 0], out_proj.weight, out_proj.bias).float(), dim=-1)
        key = F.normalize(F.linear(keys[:, p:], out_proj.weight, out_proj.bias).float(), dim=-1)
        similarity = (key * query[:, None]).sum(-1)  # (N, P)
        low = similarity.amin(1, keepdim=True)
        span = similarity.amax(1, keepdim=True) - low
        loosened = (similarity - low) / span.where(span > 0, torch.inf)
        weighted = torch.einsum("nkd,npd->nkp", gradient[:, :, 0].float(), values[:, p:])
        patches = torch.relu(weighted * loosened[:, None])  # (N, k, P)
        grid = self.grid or _square(patches.shape[-1], self.layer_names[0])
        if math.prod(grid) != patches.shape[-1]:
            raise CamkitValueError(
                f"grid: {grid} holds {math.prod(grid)} patches, but the block has "
                f"{patches.shape[-1]} after {p} prefix token(s)"
            )
        maps = patches.reshape(*patches.shape[:2], *grid)
        if upsample:
            size = tuple(request.x.shape[2:])
            resized = map_ops.upsample(maps.flatten(0, 1), size)
            maps = resized.view(*maps.shape[:2], *resized.shape[1:])
        return map_ops.scale_maps_(maps.contiguous())


def text_relevance(
    model: nn.Module,
    input_ids: Tensor,
    image_embeds: Tensor,
    attentions: Sequence[str],
    *,
    eos: Tensor | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    r"""Grad-ECLIP's text side: how much each token of a caption makes it match an image.

    For each attention block named (the authors use the text encoder's last
    few), with :math:`g` the gradient of the cosine similarity of the text's
    embedding and ``image_embeds`` at the end-of-text token's attention output,
    :math:`v_i` token :math:`i`'s values and :math:`\lambda_i` the min-max
    scaled cosine of the end-of-text query and token :math:`i`'s key (both
    through ``out_proj``), the relevance is :math:`\operatorname{ReLU}(\sum_{	ext{blocks}}
    \lambda_i \sum_d g_d v_{i,d})`, kept for the tokens between the first and the
    end-of-text token and scaled to sum to 1, as the authors' code does.

    Args:
        model: A text encoder called as ``model(input_ids, **forward_kwargs)`` that
            returns the text embeddings ``(N, D)`` (or an output with
            ``text_embeds``), such as a wrapper of ``CLIPModel.get_text_features``.
        input_ids: The captions' token ids ``(N, L)``.
        image_embeds: The image embedding each caption is compared with, ``(D,)``
            or ``(N, D)``.
        attentions: The attention blocks to read (``q_proj``, ``k_proj``,
            ``v_proj`` and ``out_proj`` in each).
        eos: Each caption's end-of-text position ``(N,)``; by default the position
            of its largest token id, as CLIP's own pooling finds it.
        forward_kwargs: Further keyword inputs of the model (an attention mask).

    Returns:
        ``(N, L)`` relevances: non-negative, zero outside the caption's words, each
        row summing to 1 (zeros where no word is relevant).

    Raises:
        CamkitValueError: For an attention block without the projections, or
            shapes that do not fit.
    """
    blocks = []
    for name in attentions:
        block = resolve_layer(model, name).module
        if not all(isinstance(getattr(block, p, None), nn.Linear) for p in PROJECTIONS):
            raise CamkitValueError(
                f"attentions: {name!r} ({type(block).__name__}) lacks q_proj, k_proj, v_proj "
                f"or out_proj; name attention blocks, such as a CLIP text layer's self_attn"
            )
        blocks.append(block)
    if input_ids.dim() != 2:
        raise CamkitValueError(f"input_ids: got shape {tuple(input_ids.shape)}; allowed: (N, L)")
    n, length = input_ids.shape
    ends = input_ids.argmax(-1) if eos is None else eos.to(input_ids.device).long()
    recorders = [_Recorder([(p, getattr(b, p)) for p in PROJECTIONS]) for b in blocks]
    with eval_mode(model), torch.enable_grad(), contextlib.ExitStack() as stack:
        for recorder in recorders:
            stack.enter_context(recorder)
        output = model(input_ids, **(forward_kwargs or {}))
        embeds = output if isinstance(output, Tensor) else output.text_embeds
        reference = image_embeds.to(embeds.dtype).expand_as(embeds)
        similarity = F.cosine_similarity(embeds, reference, dim=-1)
        attended = [r.attended for r in recorders]
        gradients = torch.autograd.grad(similarity.sum(), attended)
    rows = torch.arange(n, device=input_ids.device)
    total = torch.zeros(n, length, device=input_ids.device)
    with torch.no_grad():
        for recorder, block, gradient in zip(recorders, blocks, gradients, strict=True):
            queries, keys, values = (recorder.outputs[i].float() for i in range(3))
            out_proj = cast(nn.Linear, block.get_submodule("out_proj"))
            query = F.normalize(
                F.linear(queries[rows, ends], out_proj.weight, out_proj.bias), dim=-1
            )
            key = F.normalize(F.linear(keys, out_proj.weight, out_proj.bias), dim=-1)
            cosine = (key * query[:, None]).sum(-1)
            low = cosine.amin(1, keepdim=True)
            span = cosine.amax(1, keepdim=True) - low
            loosened = (cosine - low) / span.where(span > 0, torch.inf)
            total += (gradient[rows, ends].float()[:, None] * values).sum(-1) * loosened
        positions = torch.arange(length, device=input_ids.device)
        words = (positions[None] >= 1) & (positions[None] < ends[:, None])
        relevance = total.clamp_min(0) * words
        sums = relevance.sum(1, keepdim=True)
        return relevance / sums.where(sums > 0, torch.inf)


class _Recorder(Hooks):
    """Records the queries, keys, values and the input of ``out_proj``, in the graph."""

    watches_inputs = True

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__(modules)
        self.outputs: dict[int, Tensor] = {}
        self.attended = torch.empty(0)

    def on_output(self, index: int, output: Any) -> Any:
        if index < 3 and isinstance(output, Tensor):
            self.outputs[index] = output.detach()
        return None

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        if index == 3:
            self.attended = args[0]
        return None


def _square(count: int, name: str) -> tuple[int, int]:
    side = math.isqrt(count)
    if side * side != count:
        raise CamkitValueError(
            f"grid: {name!r} has {count} patches, not a square number; pass grid=(h, w)"
        )
    return side, side
