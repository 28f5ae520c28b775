"""Grad-ECLIP: the last attention block of a CLIP-style image encoder, read through the
gradient of an image-text similarity at its class token."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import Hooks
from camkit._engine.layout import Layout
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


class _Projections(Hooks):
    """On one attention block: records the queries, keys and values, and the input of
    ``out_proj`` (the heads' concatenated output). With ``leaf``, that input becomes a leaf
    the rest of the forward pass records from (the pass before it runs without
    gradients); otherwise it is recorded as it is, in a graph recorded throughout."""

    watches_inputs = True

    def __init__(self, block: nn.Module, leaf: bool) -> None:
        super().__init__([(p, getattr(block, p)) for p in PROJECTIONS])
        self.leaf = leaf
        self.outputs: dict[int, Tensor] = {}
        self.attended: Tensor | None = None

    def on_output(self, index: int, output: Any) -> Any:
        if index < 3 and isinstance(output, Tensor):
            self.outputs[index] = output.detach()
        return None

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        if index != 3:
            return None
        if not self.leaf:
            self.attended = args[0]
            return None
        torch.set_grad_enabled(True)
        self.attended = args[0].detach().requires_grad_(True)
        return (self.attended, *args[1:])

    def read(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The queries, keys and values (float32) and the ``out_proj`` input of the pass."""
        if self.attended is None or len(self.outputs) != 3:
            raise CamkitValueError(f"attention: {name!r} did not run in the forward pass")
        queries, keys, values = (self.outputs[i].float() for i in range(3))
        return queries, keys, values, self.attended

    def before_out_proj(self, gradient: Tensor) -> Tensor:
        """The gradient at the heads' concatenated output, from the one at :meth:`read`'s."""
        return gradient


class _PoolingProjections(Hooks):
    """On a ``torch.nn.MultiheadAttention`` (SigLIP's attention-pooling head, whose query is
    a learnt probe): records the queries, keys and values, computed from its inputs with
    its ``in_proj`` weights, and makes its output (after ``out_proj``) a leaf the rest of
    the forward pass records from."""

    watches_inputs = True

    def __init__(self, block: nn.MultiheadAttention) -> None:
        super().__init__([("attention", block)])
        self.block = block
        self.outputs: dict[int, Tensor] = {}
        self.attended: Tensor | None = None

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        block = self.block
        if len(args) < 3 or block.in_proj_weight is None:
            return None
        weights = block.in_proj_weight.detach().chunk(3)
        biases = [None] * 3 if block.in_proj_bias is None else block.in_proj_bias.detach().chunk(3)
        for i in range(3):
            self.outputs[i] = F.linear(args[i].detach(), weights[i], biases[i])
        return None

    def on_output(self, index: int, output: Any) -> Any:
        torch.set_grad_enabled(True)
        self.attended = output[0].detach().requires_grad_(True)
        return (self.attended, *output[1:])

    def read(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The queries, keys and values (float32) and the block's output of the pass."""
        if self.attended is None or len(self.outputs) != 3:
            raise CamkitValueError(
                f"attention: {name!r} did not run in the forward pass with its query, key "
                f"and value given as positional inputs"
            )
        queries, keys, values = (self.outputs[i].float() for i in range(3))
        return queries, keys, values, self.attended

    def before_out_proj(self, gradient: Tensor) -> Tensor:
        """The gradient at the heads' concatenated output: ``out_proj`` is linear, so the
        gradient at its input is the one at its output times its weight."""
        return gradient @ self.block.out_proj.weight.detach().to(gradient.dtype)


def _attention_block(model: nn.Module, name: str, argument: str) -> nn.Module:
    """The attention block ``name`` of ``model``, checked to have the four projections (or
    to be a batch-first ``torch.nn.MultiheadAttention``)."""
    block = resolve_layer(model, name).module
    if isinstance(block, nn.MultiheadAttention):
        if not block.batch_first or block.in_proj_weight is None:
            raise CamkitValueError(
                f"{argument}: {name!r} is a torch.nn.MultiheadAttention that is not batch "
                f"first or has separate key and value sizes; Grad-ECLIP reads batch-first "
                f"attention with one in_proj weight (SigLIP's pooling head)"
            )
        return block
    missing = [p for p in PROJECTIONS if not isinstance(getattr(block, p, None), nn.Linear)]
    if missing:
        raise CamkitValueError(
            f"{argument}: {name!r} ({type(block).__name__}) has no {', '.join(missing)} "
            f"linear layer(s); name an attention block with q_proj, k_proj, v_proj and "
            f"out_proj, such as a CLIP encoder layer's self_attn"
        )
    return block


def _loosened(block: nn.Module, query: Tensor, keys: Tensor) -> Tensor:
    """Grad-ECLIP's key weights ``(N, P)``: the cosine of each row's query ``(N, D)`` and its
    keys ``(N, P, D)``, both passed through ``out_proj`` (as the authors' code does), scaled
    to [0, 1] over the keys of a row (zeros where they are all equal)."""
    out_proj = cast(nn.Linear, block.get_submodule("out_proj"))  # checked when found
    # in the activations' precision (float32), whatever the model's own (float64, bfloat16)
    weight = out_proj.weight.to(query.dtype)
    bias = None if out_proj.bias is None else out_proj.bias.to(query.dtype)
    query = F.normalize(F.linear(query, weight, bias), dim=-1)
    keys = F.normalize(F.linear(keys, weight, bias), dim=-1)
    cosine = (keys * query[:, None]).sum(-1)
    low = cosine.amin(1, keepdim=True)
    span = cosine.amax(1, keepdim=True) - low
    return (cosine - low) / span.where(span > 0, torch.inf)


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

    SigLIP has no class token: its image embedding is read by an attention-pooling
    head, whose query is a learnt probe. Name that head's ``torch.nn.MultiheadAttention``
    (``"vision_model.head.attention"``) with ``prefix_tokens=0``, and the probe plays
    the class token's part: its query, the gradient at its attention output before
    ``out_proj``, every token a patch (camkit's extension of the method; the paper
    and the authors' code treat CLIP).

    Args:
        model: A module whose output the target scores, such as a Hugging Face
            ``CLIPVisionModelWithProjection`` (its ``image_embeds``).
        attention: The last attention block of the image encoder, with
            ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` submodules
            (``"vision_model.encoder.layers.11.self_attn"``), or SigLIP's pooling
            head's ``torch.nn.MultiheadAttention`` (batch first).
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

    reports_output = True

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
        block = _attention_block(self.model, attention, "attention")
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int):
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens!r}; allowed: an int >= 0")
        if prefix_tokens < 0:
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens}; allowed: an int >= 0")
        self.block = block
        self.layer_names = [attention]
        self.prefix_tokens = prefix_tokens
        if grid is not None and not (
            isinstance(grid, (tuple, list))
            and len(grid) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
        ):
            raise CamkitValueError(f"grid: got {grid!r}; allowed: (h, w), two positive ints")
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
        name = self.layer_names[0]
        hooks: _Projections | _PoolingProjections = (
            _PoolingProjections(self.block)
            if isinstance(self.block, nn.MultiheadAttention)
            else _Projections(self.block, leaf=True)
        )
        with hooks, torch.no_grad():
            output = request.run(self.model, request.x)
            bound, scores = bind_and_score(request, output)
            queries, keys, values, attended = hooks.read(name)
            (gradient,) = gradients_at(scores, [attended], [repr(name)])
        with torch.no_grad():
            p = self.prefix_tokens
            gradient = hooks.before_out_proj(gradient[:, :, 0].float())
            loosened = _loosened(self.block, queries[:, 0], keys[:, p:])
            weighted = torch.einsum("nkd,npd->nkp", gradient, values[:, p:])
            patches = torch.relu(weighted * loosened[:, None])  # (N, k, P)
            n, k, count = patches.shape
            layout = Layout("tokens", prefix_tokens=0, grid=self.grid)
            maps = layout.to_channels_first(patches.reshape(n * k, count, 1), name)
            if upsample:
                maps = map_ops.upsample(maps[:, 0], tuple(request.x.shape[2:]))[:, None]
            maps = map_ops.scale_maps_(maps.reshape(n, k, *maps.shape[2:]).contiguous())
        return Explained(maps, {}, output, bound, scores)


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
    through ``out_proj``), the relevance is :math:`\operatorname{ReLU}(\sum_{\text{blocks}}
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
    blocks = [_attention_block(model, name, "attentions") for name in attentions]
    if input_ids.dim() != 2:
        raise CamkitValueError(f"input_ids: got shape {tuple(input_ids.shape)}; allowed: (N, L)")
    n, length = input_ids.shape
    ends = input_ids.argmax(-1) if eos is None else eos.to(input_ids.device).long()
    recorders = [_Projections(block, leaf=False) for block in blocks]
    with eval_mode(model), torch.enable_grad(), contextlib.ExitStack() as stack:
        for recorder in recorders:
            stack.enter_context(recorder)
        output = model(input_ids, **(forward_kwargs or {}))
        embeds = output if isinstance(output, Tensor) else output.text_embeds
        reference = image_embeds.to(embeds.dtype).expand_as(embeds)
        similarity = F.cosine_similarity(embeds, reference, dim=-1)
        read = [r.read(name) for r, name in zip(recorders, attentions, strict=True)]
        gradients = torch.autograd.grad(similarity.sum(), [attended for *_, attended in read])
    rows = torch.arange(n, device=input_ids.device)
    total = torch.zeros(n, length, device=input_ids.device)
    with torch.no_grad():
        for block, (queries, keys, values, _), gradient in zip(
            blocks, read, gradients, strict=True
        ):
            loosened = _loosened(block, queries[rows, ends], keys)
            total += (gradient[rows, ends].float()[:, None] * values).sum(-1) * loosened
        positions = torch.arange(length, device=input_ids.device)
        words = (positions[None] >= 1) & (positions[None] < ends[:, None])
        relevance = total.clamp_min(0) * words
        sums = relevance.sum(1, keepdim=True)
        return relevance / sums.where(sums > 0, torch.inf)
