"""LeGrad against plain autograd on a tiny vision transformer, and on timm's ViT."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import CamkitTypeError, CamkitValueError, LeGrad
from tests.helpers import assert_untouched, snapshot


class Attention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Identity()  # its output is the attention probabilities
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.probs((q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5).softmax(-1))
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """16 x 16 images, 4 x 4 patches: a CLS token and 16 patch tokens, 3 blocks."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.Sequential(Block(), Block(), Block())
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, classes)

    def head(self, tokens: Tensor) -> Tensor:
        return self.fc(self.norm(tokens)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.blocks(tokens))


def _reference(model: TinyViT, x: Tensor, classes: Tensor, layers: list[int], own: bool) -> Tensor:
    """LeGrad by its definition: one full backward pass per layer."""
    probs: dict[int, Tensor] = {}
    outs: dict[int, Tensor] = {}
    handles = []
    for i in layers:
        block = model.blocks[i]
        handles.append(
            block.attn.probs.register_forward_hook(lambda m, a, o, i=i: probs.update({i: o}))
        )
        handles.append(block.register_forward_hook(lambda m, a, o, i=i: outs.update({i: o})))
    with torch.enable_grad():
        logits = model(x)
        total = torch.zeros(len(x), 4, 4)
        for i in layers:
            out = model.head(outs[i]) if own else logits
            score = out[torch.arange(len(x)), classes].sum()
            (grad,) = torch.autograd.grad(score, probs[i], retain_graph=True)
            relevance = grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]  # heads, then queries
            total += relevance.reshape(len(x), 4, 4)
    for handle in handles:
        handle.remove()
    up = F.interpolate(total[:, None], size=(16, 16), mode="bilinear")[:, 0]
    flat = up.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(up)


@pytest.mark.parametrize("own", [True, False], ids=["scored per layer", "model's score"])
@pytest.mark.parametrize("layers", [[2], [1, 2], [0, 1, 2]])
def test_legrad_matches_its_definition(layers: list[int], own: bool) -> None:
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(3, 1, 16, 16)
    classes = torch.tensor([0, 3, 4])
    attentions = [f"blocks.{i}.attn.probs" for i in layers]
    options: dict[str, Any] = {}
    if own:
        options = {"blocks": [f"blocks.{i}" for i in layers], "head": model.head}
    maps = LeGrad(model, attentions, **options)(x, classes)
    torch.testing.assert_close(
        maps, _reference(model, x, classes, layers, own), atol=1e-5, rtol=1e-4
    )


def test_legrad_k_targets_layer_maps_and_untouched_model() -> None:
    torch.manual_seed(0)
    model = TinyViT().train()
    x = torch.randn(2, 1, 16, 16)
    before = snapshot(model, x)
    cam = LeGrad(model, ["blocks.1.attn.probs", "blocks.2.attn.probs"])
    result = cam.explain(x, torch.tensor([[0, 1], [2, 3]]))
    assert result.maps.shape == (2, 2, 16, 16)
    assert {k: tuple(v.shape) for k, v in result.layer_maps.items()} == {
        "blocks.1.attn.probs": (2, 2, 4, 4),
        "blocks.2.attn.probs": (2, 2, 4, 4),
    }
    torch.testing.assert_close(result.maps[:, 1], cam(x, torch.tensor([1, 3])))
    assert_untouched(before, snapshot(model, x))


def test_legrad_on_timm_vit() -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5
    ).eval()
    for block in vit.blocks:
        block.attn.fused_attn = False  # the fused kernel never forms the probabilities
    x = torch.randn(2, 3, 32, 32)
    last = [len(vit.blocks) - 2, len(vit.blocks) - 1]
    cam = LeGrad(
        vit,
        [f"blocks.{i}.attn.attn_drop" for i in last],
        blocks=[f"blocks.{i}" for i in last],
        head=lambda tokens: vit.forward_head(vit.norm(tokens)),
    )
    maps = cam(x, 2)
    assert maps.shape == (2, 32, 32)
    assert torch.isfinite(maps).all() and float(maps.amax()) == 1.0


def test_legrad_refusals() -> None:
    model = TinyViT().eval()
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(CamkitValueError, match="attentions: got \\[\\]"):
        LeGrad(model, [])
    with pytest.raises(CamkitValueError, match="attentions: got 3; allowed: a non-empty list"):
        LeGrad(model, 3)  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match="blocks: got int; allowed: a list of the blocks"):
        LeGrad(model, ["blocks.0.attn.probs"], blocks=3, head=model.head)  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="blocks: blocks and head go together"):
        LeGrad(model, ["blocks.0.attn.probs"], blocks=["blocks.0"])
    with pytest.raises(CamkitValueError, match="blocks: got 2 for 1 attention"):
        LeGrad(model, ["blocks.0.attn.probs"], blocks=["blocks.0", "blocks.1"], head=model.head)
    with pytest.raises(CamkitValueError, match=r"returned shape \(1, 17, 8\)"):
        LeGrad(model, ["blocks.0.attn"])(x, 1)
