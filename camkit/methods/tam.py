"""TAM, the Token Activation Map: a map over the image for each token a vision-language
model says, read from its last hidden states, with no backward pass."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import Hooks
from camkit._engine.model import detached, eager, eval_mode
from camkit.errors import CamkitModelError, CamkitTypeError, CamkitValueError
from camkit.layers import resolve_layer
from camkit.result import CAMResult
from camkit.targets import TokenTarget

__all__ = ["TAM", "rank_gaussian_filter"]

SCALES = ("joint", "map", None)
"""How TAM scales its maps (see :class:`TAM`)."""


class _HeadInput(Hooks):
    """Records the input of the language model's head: the last hidden states."""

    watches_inputs = True

    def __init__(self, head: nn.Module) -> None:
        super().__init__([("head", head)])
        self.hidden: Tensor | None = None

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        if args and isinstance(args[0], Tensor):
            self.hidden = args[0].detach()
        return None

    def on_output(self, index: int, output: Any) -> Any:
        return None


class TAM:
    r"""The Token Activation Map (Li et al., *Token Activation Map to Visually Explain
    Multimodal LLMs*, ICCV 2025, https://arxiv.org/abs/2506.23270; code:
    github.com/xmed-lab/TAM): which image tokens made a vision-language model say each
    word, read from one forward pass, with no backward pass.

    Run the model once on the prompt with the answer appended (teacher forcing, as
    ``generate`` returns it). With :math:`h_p` the last hidden state at position
    :math:`p` (the head's input) and :math:`w_c, b_c` the head's row and bias for token
    :math:`c`, class :math:`c`'s activation at :math:`p` is
    :math:`s_c(p) = \max(0, w_c \cdot h_p + b_c)`. For the answer token :math:`c_j` at
    position :math:`q_j`:

    1. **Its map**: :math:`A_j = s_{c_j}` over the image tokens.
    2. **Estimated causal inference** (``causal_inference=True``): the context tokens are
       the prompt's (at their positions :math:`p_i`) and the earlier answer tokens (each
       read at the position that produced it, :math:`q_m - 1`), leaving out those with
       :math:`c_j`'s id. Each context token :math:`i` has its own map :math:`A_i`
       (its own class over the image tokens) and a weight, :math:`c_j`'s activation
       where it sits, :math:`u_i = s_{c_j}(p_i)`. The interference is
       :math:`I_j = \sum_i u_i A_i / (\sum_i u_i + 10^{-8})`; with the least-squares
       scale :math:`\lambda = \langle A_j, I_j\rangle / \langle I_j, I_j\rangle`, the
       map becomes :math:`\max(0, A_j - \lambda I_j)`.
    3. **Scaling** (``scale``): ``"joint"``, as the authors, min-max scales the map
       together with the text activations :math:`s_{c_j}` at the context positions
       (so a word the text explains more than the image gets a faint map);
       ``"map"`` scales each map to [0, 1] on its own; ``None`` keeps activations.
    4. **Rank Gaussian filter** (``rank_filter=True``, :func:`rank_gaussian_filter`),
       on each image's (or frame's) grid.

    Where camkit departs from the authors' code (read in ``tam.py``), it says so:

    - The authors give the first answer token's context map the class of the token
      *before* it (the template's last token), and the first prompt token's the class
      the model predicted after it; camkit gives every context token its own class.
    - The authors leave out context tokens whose decoded *text* equals the explained
      token's; camkit compares ids.
    - The authors' filter gives NaN where a window is constant and positive (a
      standard deviation of 0); camkit takes that window's value.
    - The authors divide by a zero span where a map and its text activations are all
      equal (NaN); camkit gives zeros there.
    - The authors round maps to 8 bits; camkit keeps float32.

    Args:
        model: The vision-language model (a Hugging Face ``...ForConditionalGeneration``),
            called as ``model(**inputs)``.
        head: The language model's head, a ``Linear`` from the hidden size to the
            vocabulary (``"lm_head"``).
        image_token: The id of the tokens that stand for the image in the sequence;
            by default the model's ``config.image_token_id`` (or ``image_token_index``).
        grid: The image tokens' grid, ``(h, w)``, or ``(t, h, w)`` for video frames
            (Qwen2-VL: ``image_grid_thw`` with ``h`` and ``w`` divided by the
            vision config's ``spatial_merge_size``; see
            :func:`camkit.vision_language.image_grid`). Square
            when omitted.
        causal_inference: Apply step 2.
        rank_filter: Apply step 4.
        kernel_size: The rank Gaussian filter's window, odd.
        scale: ``"joint"``, ``"map"`` or ``None`` (step 3).

    Raises:
        CamkitValueError: For a head that is not a ``Linear``, an even kernel, or an
            unknown ``scale``.

    Example:
        >>> import torch
        >>> from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
        >>> from transformers import LlavaForConditionalGeneration
        >>> from camkit import TAM, TokenTarget
        >>> vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32,
        ...     intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        >>> text = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
        >>> model = LlavaForConditionalGeneration(
        ...     LlavaConfig(vision_config=vision, text_config=text, image_token_index=99)).eval()
        >>> ids = torch.tensor([[1, 5, *[99] * 16, 7, 8, 40, 41, 42]])  # answer: 40 41 42
        >>> inputs = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}
        >>> TAM(model, grid=(4, 4)).explain(inputs, TokenTarget([40, 41, 42])).maps.shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        head: str = "lm_head",
        *,
        image_token: int | None = None,
        grid: Sequence[int] | None = None,
        causal_inference: bool = True,
        rank_filter: bool = True,
        kernel_size: int = 3,
        scale: str | None = "joint",
    ) -> None:
        self.model = eager(model)
        self.head = resolve_layer(self.model, head)
        if not isinstance(self.head.module, nn.Linear):
            raise CamkitValueError(
                f"head: {head!r} is a {type(self.head.module).__name__}; TAM reads a Linear "
                f"from the hidden size to the vocabulary (a language model's lm_head)"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise CamkitValueError(f"kernel_size: got {kernel_size}; allowed: an odd size >= 1")
        if scale not in SCALES:
            raise CamkitValueError(f"scale: got {scale!r}; allowed: {', '.join(map(repr, SCALES))}")
        self.image_token = _image_token(self.model) if image_token is None else int(image_token)
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        if self.grid is not None and len(self.grid) not in (2, 3):
            raise CamkitValueError(f"grid: got {self.grid}; allowed: (h, w) or (t, h, w)")
        self.causal_inference = causal_inference
        self.rank_filter = rank_filter
        self.kernel_size = kernel_size
        self.scale = scale

    def settings(self) -> dict[str, Any]:
        """The options that decide TAM's maps."""
        return {
            "method": "TAM",
            "head": self.head.name,
            "image_token": self.image_token,
            "grid": self.grid,
            "causal_inference": self.causal_inference,
            "rank_filter": self.rank_filter,
            "kernel_size": self.kernel_size,
            "scale": self.scale,
        }

    def __call__(self, inputs: Mapping[str, Any], target: TokenTarget, **kwargs: Any) -> Tensor:
        """The maps of :meth:`explain`."""
        return self.explain(inputs, target, **kwargs).maps

    def explain(
        self,
        inputs: Mapping[str, Any],
        target: TokenTarget,
        *,
        prompt: Sequence[int] | slice | None = None,
        size: Sequence[int] | None = None,
    ) -> CAMResult:
        """One map per token of ``target`` over the image tokens, from one forward pass.

        Args:
            inputs: The model's inputs (a processor's output): ``input_ids`` ``(N, L)``
                holding the prompt with the answer, the image's tensors, and the rest.
            target: The explained tokens and their positions (by default the last
                ``k``), as for the gradient CAMs.
            prompt: The positions of the prompt's words, the context that step 2
                removes; the authors take the user's text, without the chat template.
                By default every position before the first explained token that is
                not an image token.
            size: Upsample the maps bilinearly to this ``(H, W)`` (the image's size);
                by default they stay on the token grid.

        Returns:
            maps ``(N, k, *grid)`` (or ``(N, k, *size)``), the model output, the tokens'
            logits ``(N, k)`` as scores, and the token ids ``(N, k)`` as classes.

        Raises:
            CamkitTypeError: If ``inputs`` has no integer ``input_ids`` or ``target`` is
                not a :class:`~camkit.TokenTarget`.
            CamkitValueError: If the image tokens do not fill the grid, or a token's
                position is not after the image.
        """
        if not isinstance(target, TokenTarget):
            raise CamkitTypeError(
                f"target: got {type(target).__name__}; TAM explains the tokens of a "
                f"camkit.TokenTarget"
            )
        ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise CamkitTypeError(
                "inputs: expected a mapping with integer input_ids of shape (N, L), got "
                + (
                    type(inputs).__name__
                    if ids is None
                    else f"input_ids {getattr(ids, 'shape', ids)}"
                )
            )
        n, length = ids.shape
        linear = cast(nn.Linear, self.head.module)
        weight = linear.weight.detach()
        tokens, positions = target.rows(n, length, len(weight))
        bias = None if linear.bias is None else linear.bias.detach()
        hidden, output = self._hidden_states(inputs, ids)
        ids, tokens, positions = (t.to(hidden.device) for t in (ids, tokens, positions))
        maps = torch.stack(
            [
                self._sample_maps(hidden[r], ids[r], tokens[r], positions[r], prompt, weight, bias)
                for r in range(n)
            ]
        )
        if size is not None:
            size = tuple(int(s) for s in size)
            spatial = maps.shape[maps.dim() - len(size) :]
            resized = map_ops.upsample(maps.reshape(-1, *spatial), size)
            maps = resized.view(*maps.shape[: maps.dim() - len(size)], *size)
        rows = torch.arange(n, device=hidden.device)[:, None]
        scores = (hidden[rows, positions - 1].float() * weight[tokens].float()).sum(-1)
        if bias is not None:
            scores = scores + bias[tokens].float()
        return CAMResult(maps, output, scores, tokens, {})

    def _hidden_states(self, inputs: Mapping[str, Any], ids: Tensor) -> tuple[Tensor, Any]:
        """The head's input ``(N, L, d)`` and the model's output, from one forward pass."""
        with eval_mode(self.model), torch.no_grad(), _HeadInput(self.head.module) as hooked:
            try:
                output = self.model(**inputs)
            except Exception as error:
                raise CamkitModelError(
                    f"model: the forward pass failed on inputs {sorted(inputs)}: "
                    f"{type(error).__name__}: {error}"
                ) from error
        hidden = hooked.hidden
        if hidden is None or hidden.dim() != 3 or hidden.shape[:2] != ids.shape:
            raise CamkitValueError(
                f"head: {self.head.name!r} did not read (N, L, hidden) states for the "
                f"{tuple(ids.shape)} input_ids (it read "
                f"{None if hidden is None else tuple(hidden.shape)}); give the language "
                f"model's head, and inputs without logits_to_keep"
            )
        return hidden, detached(output)

    def _sample_maps(
        self,
        hidden: Tensor,
        ids: Tensor,
        tokens: Tensor,
        positions: Tensor,
        prompt: Sequence[int] | slice | None,
        weight: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        """The ``(k, *grid)`` maps of one sequence."""
        image = (ids == self.image_token).nonzero()[:, 0]
        if not len(image):
            raise CamkitValueError(
                f"inputs: a sequence holds no image token (id {self.image_token}); give "
                f"the model's input_ids with the image's tokens, or image_token="
            )
        grid = self._grid(len(image))
        first = int(positions.min())
        if int(image.max()) >= first:
            raise CamkitValueError(
                f"target: a token at position {first} comes before the image's last token "
                f"({int(image.max())}); TAM explains tokens said after the image"
            )

        def activation(classes: Tensor, where: Tensor) -> Tensor:
            """s_c(p) for each class (rows) at each position (columns), >= 0."""
            values = weight[classes].float() @ hidden[where].float().T
            if bias is not None:
                values = values + bias[classes].float()[:, None]
            return values.clamp_min(0)

        maps = activation(tokens, image)  # (k, n_image)
        context = _context_positions(prompt, image, first, len(ids))  # prompt positions
        # each context token: where it is read (prompt: its place; answer m: q_m - 1)
        read_at = torch.cat([context, positions - 1])
        context_ids = torch.cat([ids[context], tokens])
        k, n_prompt = len(tokens), len(context)
        before = torch.ones(k, n_prompt + k, dtype=torch.bool, device=ids.device)
        before[:, n_prompt:] = torch.ones(k, k, device=ids.device).tril(-1).bool()
        text = activation(tokens, read_at)  # (k, n_prompt + k): u, and what "joint" scales with
        if self.causal_inference:
            own = activation(context_ids, image)  # each context token's own map
            use = before & (context_ids[None, :] != tokens[:, None])
            weights = text * use
            weights = weights / (weights.sum(1, keepdim=True) + 1e-8)
            interference = weights @ own  # (k, n_image)
            dot = (maps * interference).sum(1)
            norm = (interference * interference).sum(1)
            scale = torch.where(norm > 0, dot / norm.where(norm > 0, 1.0), 0.0)
            maps = (maps - scale[:, None] * interference).clamp_min(0)
        if self.scale == "joint":
            joint = torch.where(before, text, math.nan)
            low = torch.minimum(maps.amin(1), joint.nan_to_num(math.inf).amin(1))
            high = torch.maximum(maps.amax(1), joint.nan_to_num(-math.inf).amax(1))
            span = high - low
            maps = (maps - low[:, None]) / span.where(span > 0, math.inf)[:, None]
        gridded = maps.view(k, *grid)
        if self.rank_filter:
            frames = gridded.view(-1, *grid[-2:])
            gridded = rank_gaussian_filter(frames, self.kernel_size).view(k, *grid)
        if self.scale == "map":
            map_ops.min_max_normalize_(gridded.view(k, -1))
        return gridded

    def _grid(self, count: int) -> tuple[int, ...]:
        if self.grid is None:
            side = math.isqrt(count)
            if side * side != count:
                raise CamkitValueError(
                    f"grid: the sequence has {count} image tokens, not a square; give "
                    f"grid=(h, w) (camkit.vision_language.image_grid reads it from the inputs)"
                )
            return side, side
        if math.prod(self.grid) != count:
            raise CamkitValueError(
                f"grid: {self.grid} holds {math.prod(self.grid)} tokens, but the sequence "
                f"has {count} image tokens (id {self.image_token})"
            )
        return self.grid


def rank_gaussian_filter(maps: Tensor, kernel_size: int = 3) -> Tensor:
    r"""TAM's rank Gaussian filter of ``(N, H, W)`` maps (non-negative values).

    Each position's ``kernel_size`` x ``kernel_size`` window (reflect-padded at the
    border, as ``numpy.pad(mode="reflect")``) is sorted; with :math:`\mu` and
    :math:`\sigma` its mean and (population) standard deviation, the value is the
    sorted window weighted by a Gaussian over the ranks, centred on the median, of
    width the window's coefficient of variation :math:`\sigma / \mu`, normalised to
    sum 1; a window whose mean is not positive gives 0, and a constant positive
    window its value (the Gaussian's limit; the authors' code gives NaN there).

    Example:
        >>> import torch
        >>> rank_gaussian_filter(torch.ones(1, 3, 3)).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    n, h, w = maps.shape
    pad = kernel_size // 2
    padded = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect") if pad else maps[:, None]
    windows = F.unfold(padded, kernel_size).transpose(1, 2)  # (N, H*W, k*k)
    ranked = windows.sort(dim=-1).values
    mean = ranked.mean(-1, keepdim=True)
    spread_sq = (ranked - mean).square().mean(-1, keepdim=True)  # Tensor.std is slow on rows of 9
    sigma = spread_sq.sqrt() / mean.where(mean > 0, 1.0)
    ranks = torch.arange(kernel_size**2, dtype=maps.dtype, device=maps.device) - kernel_size**2 // 2
    spread = (2 * sigma**2).where(sigma > 0, 1.0)
    kernel = torch.exp(-(ranks**2) / spread)
    kernel = torch.where(sigma > 0, kernel, (ranks == 0).to(maps.dtype))
    kernel = kernel / kernel.sum(-1, keepdim=True)
    values = (ranked * kernel).sum(-1, keepdim=True)
    return torch.where(mean > 0, values, 0.0).view(n, h, w)


def _image_token(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise CamkitValueError(
        "image_token: the model's config has no image_token_id or image_token_index; "
        "give the id of the image's tokens"
    )


def _context_positions(
    prompt: Sequence[int] | slice | None, image: Tensor, first: int, length: int
) -> Tensor:
    everything = torch.arange(length, device=image.device)
    if prompt is None:
        keep = everything < first
        keep[image] = False
        return everything[keep]
    chosen = everything[prompt] if isinstance(prompt, slice) else torch.as_tensor(list(prompt))
    chosen = chosen.to(image.device).long()
    if len(chosen) and (int(chosen.max()) >= first or int(chosen.min()) < 0):
        raise CamkitValueError(
            f"prompt: positions must lie before the first explained token ({first}), "
            f"got {chosen.tolist()[:8]}"
        )
    return chosen
