"""A small vision transformer for MNIST, the worked example's model for LeGrad.

The ConvNet has no attention, so the transformer methods are shown on this
network: 4 x 4 patches (a 7 x 7 grid of tokens) and a CLS token, three
pre-norm blocks of width 32 with 4 heads, the class read from the CLS token.
Each block's attention probabilities pass through ``blocks.{i}.attn.probs``
(an ``nn.Identity``), so :class:`camkit.LeGrad` can hook them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from examples.mnist.model import CLASSES

DEFAULT_VIT_WEIGHTS = Path(__file__).parent / "vit-weights.pt"
PATCH = 4
GRID = 28 // PATCH


class Attention(nn.Module):
    """Multi-head self-attention whose probabilities are the output of ``probs``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = self.probs((q @ k.transpose(-2, -1) * self.scale).softmax(-1))
        return self.proj((attention @ v).transpose(1, 2).reshape(n, t, d))  # type: ignore[no-any-return]


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a two-layer MLP, each residual."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class MnistViT(nn.Module):
    """``patches(4x4) + CLS → 3 x Block(32, 4 heads, MLP 64) → LayerNorm → Linear(32,10)``.

    Returns logits. :meth:`classify` is the model's head applied to any
    block's tokens ``(N, 50, 32)``: the final norm, the CLS token, the linear
    layer, which LeGrad uses to score each layer on its own tokens.
    """

    def __init__(self, dim: int = 32, depth: int = 3, heads: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, dim, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, GRID * GRID + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def classify(self, tokens: Tensor) -> Tensor:
        """The class scores read from a block's tokens."""
        return self.head(self.norm(tokens)[:, 0])  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.position
        return self.classify(self.blocks(tokens))
