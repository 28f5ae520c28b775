"""The example's vision-language model: a small convolutional image encoder whose 8 x 16
feature grid becomes 128 image tokens in a small causal transformer that says the answer.

It is built like the models people explain (LLaVA and its kin): the prompt holds
placeholder image tokens, replaced by the projected image features; the transformer's
last hidden states go through a final norm and ``lm_head`` to logits ``(N, L, 15)``."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from examples.vlm.data import ANSWER, GRID, IMAGE, PROMPT, WORDS


class Block(nn.Module):
    """A pre-norm transformer block with causal self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, h: Tensor, causal: Tensor) -> Tensor:
        x = self.norm1(h)
        h = h + self.attention(x, x, x, attn_mask=causal, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))  # type: ignore[no-any-return]


class DigitTeller(nn.Module):
    """Reads a ``(N, 1, 32, 64)`` canvas and the token ids; returns logits ``(N, L, 15)``.

    The image encoder is ``vision``: three 3 x 3 convolutions with ReLU, the first two
    followed by 2 x 2 pooling (32 x 64 → 8 x 16); ``vision.relu3``, its last
    convolution's ReLU, is the 8 x 16 grid the image tokens are made from;
    ``vision.relu2`` is the finer 16 x 32 grid the example explains.
    ``config.image_token_id`` is the placeholder's id, as in Hugging Face's configs.
    """

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_token_id=IMAGE)
        self.vision = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 32, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(32, 64, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv3=nn.Conv2d(64, 64, 3, padding=1),
                relu3=nn.ReLU(),
            )
        )
        self.project = nn.Linear(64, width)
        self.embed = nn.Embedding(len(WORDS), width)
        self.position = nn.Parameter(torch.randn(PROMPT + ANSWER, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, len(WORDS))

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        features = self.vision(pixel_values)  # (N, 64, 8, 16)
        tokens = self.project(features.flatten(2).transpose(1, 2))  # (N, 128, width)
        h = self.embed(input_ids)
        image = (input_ids == IMAGE)[..., None]
        h = h.masked_scatter(image, tokens.to(h.dtype))
        length = input_ids.shape[1]
        h = h + self.position[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(1)
        for block in self.blocks:
            h = block(h, causal)
        return self.lm_head(self.norm(h))  # type: ignore[no-any-return]


assert GRID[0] * GRID[1] == PROMPT - 2


@torch.no_grad()
def generate(model: nn.Module, images: Tensor, prompt: Tensor, steps: int = ANSWER) -> Tensor:
    """The greedy answer ``(N, steps)``, one token at a time (no cache: the model is small)."""
    sequence = prompt
    for _ in range(steps):
        logits = model(images, sequence)
        sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return sequence[:, prompt.shape[1] :]
