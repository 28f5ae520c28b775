"""The perturbation methods' two speed-ups, each against the slow path it replaces.

Ablation-CAM re-runs only the network after the layer where torch.fx can cut
it there (checked: same maps as re-running the whole model, and the part
before the layer really runs once); Score-CAM and its smoothed variants can
mask the input with only the top channels (checked against a reference that
loops over the chosen channels itself).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from camkit import ISCAM, SSCAM, AblationCAM, CamkitValueError, ScoreCAM
from tests.helpers import assert_untouched, reference_activations_and_gradients, snapshot
from tests.models import conv_net

CLASSES = torch.tensor([[1, 3], [4, 0], [2, 2]])


def _raw(cam: Any, x: Tensor, target: Any = CLASSES) -> Tensor:
    return cam(x, target, relu=False, upsample=False, normalize=False)


class Counted:
    """Counts the calls of a module (the part of the network before the layer)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self.count)

    def count(self, *_: Any) -> None:
        self.calls += 1


class Residual(nn.Module):
    """A block whose tail reads a value from before the layer (the identity branch), and
    whose layer returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.pair = Pair()
        self.head = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.stem(x)
        features, gate = self.pair(identity)
        out = F.relu(features * gate.sigmoid() + identity)
        return self.head(out.mean(dim=(2, 3)))


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.conv(x)
        return features, features.mean(dim=1, keepdim=True)


class Untraceable(nn.Module):
    """Data-dependent control flow after the layer: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = conv_net(2)[:6]
        self.head = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if h.sum() > -1e9:  # always true, but a tensor-valued condition
            h = h * 1.0
        return self.head(h.mean(dim=(2, 3)))


CASES = {
    "conv_net 1-D, layer 2": (lambda: conv_net(1), "2", (3, 2, 13)),
    "conv_net 2-D, layer 4": (lambda: conv_net(2), "4", (3, 2, 11, 9)),
    "conv_net 3-D, layer 6": (lambda: conv_net(3), "6", (3, 2, 7, 6, 8)),
    "identity branch, tuple output": (Residual, "pair[0]", (3, 2, 6, 6)),
    "resnet18 layer3.1.conv2 (residual)": (
        lambda: torchvision.models.resnet18(num_classes=5),
        "layer3.1.conv2",
        (2, 3, 32, 32),
    ),
    "resnet18 layer4": (
        lambda: torchvision.models.resnet18(num_classes=5),
        "layer4",
        (2, 3, 32, 32),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ablation_tail_gives_the_maps_of_full_reruns(case: str) -> None:
    build, layer, shape = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(shape)
    first = next(m for m in model.modules() if not list(m.children()))
    batch_size = 7 if len(x[0]) == 2 else 256
    cam = AblationCAM(model, layer, batch_size=batch_size)
    cam(x)  # learns whether the network writes into the layer's output in place
    counter = Counted(first)
    tail = _raw(cam, x, CLASSES[: len(x)])
    tail_runs = counter.calls
    counter.calls = 0
    full = _raw(
        AblationCAM(model, layer, batch_size=batch_size, split_tail=False), x, CLASSES[: len(x)]
    )
    counter.handle.remove()
    assert tail_runs == 2  # the explained forward pass, and the prefix once
    assert counter.calls > 2
    assert full.abs().max() > 0
    torch.testing.assert_close(tail, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


def test_ablation_tail_leaves_the_model_untouched() -> None:
    model = torchvision.models.resnet18(num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model, x)
    AblationCAM(model, "layer4.0")(x, target=1)
    assert_untouched(before, snapshot(model, x))


def test_ablation_falls_back_to_full_reruns_where_fx_cannot_trace() -> None:
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(3, 2, 8, 8)
    counter = Counted(model.body[0])
    maps = _raw(AblationCAM(model, "body.5", batch_size=4), x)
    assert counter.calls == 1 + 4  # 3 samples x 5 channels, 4 per pass
    expected = _raw(AblationCAM(model, "body.5", batch_size=4, split_tail=False), x)
    torch.testing.assert_close(maps, expected)


def test_ablation_falls_back_when_the_tail_disagrees_with_the_model() -> None:
    # the tail reads an (N, N) matrix from before the layer: its rows look per-sample, but
    # picking rows of it is not what running the model on those samples gives
    class Gram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.head = nn.Linear(3, 4)

        def forward(self, x: Tensor) -> Tensor:
            flat = x.flatten(1)
            gram = flat @ flat.T
            h = self.conv(x)
            return self.head(h.mean(dim=(2, 3))) + gram.diagonal()[:, None]

    torch.manual_seed(0)
    model = Gram().eval()
    x = torch.randn(3, 2, 6, 6)
    counter = Counted(model.conv)
    maps = _raw(AblationCAM(model, "conv", batch_size=3), x, 1)
    assert counter.calls == 1 + 1 + 3  # explained pass, prefix (rejected), 9 copies 3 at a time
    expected = _raw(AblationCAM(model, "conv", batch_size=3, split_tail=False), x, 1)
    torch.testing.assert_close(maps, expected)


def test_split_tail_must_be_a_bool() -> None:
    with pytest.raises(CamkitValueError, match="split_tail: got 'yes'"):
        AblationCAM(conv_net(2), "4", split_tail="yes")  # type: ignore[arg-type]


# --- Score-CAM's top channels ---


def _top_channel_reference(
    model: nn.Module, layer: str, x: Tensor, classes: Tensor, top: int, rank_by: str
) -> Tensor:
    a, _ = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    out = torch.zeros(len(x), classes.shape[1], *a.shape[2:], dtype=torch.float64)
    with torch.no_grad():
        for i in range(len(x)):
            flat = a[i].flatten(1)
            ranking = flat.var(dim=1, unbiased=False) if rank_by == "variance" else flat.mean(1)
            chosen = sorted(ranking.argsort(descending=True)[:top].tolist())
            scores = []
            for ch in chosen:
                up = F.interpolate(a[i, ch][None, None].float(), size=x.shape[2:], mode="bilinear")
                up = up[0, 0].double()
                mask = (up - up.min()) / (up.max() - up.min())
                scores.append(model((x[i] * mask.float())[None])[0].double()[classes[i]])
            weights = torch.softmax(torch.stack(scores), dim=0)  # (top, k)
            for t in range(classes.shape[1]):
                out[i, t] = torch.einsum("c,c...->...", weights[:, t], a[i, chosen])
    return out


@pytest.mark.parametrize("rank_by", ["variance", "mean"])
@pytest.mark.parametrize("top", [1, 3])
def test_score_cam_top_channels_matches_its_definition(rank_by: str, top: int) -> None:
    torch.manual_seed(0)
    model = conv_net(2)
    x = torch.randn(3, 2, 11, 9)
    expected = _top_channel_reference(model, "4", x, CLASSES, top, rank_by)
    cam = ScoreCAM(model, "4", batch_size=4, top_channels=top, rank_by=rank_by)
    torch.testing.assert_close(_raw(cam, x).double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", [ScoreCAM, SSCAM, ISCAM], ids=lambda m: m.__name__)
def test_top_channels_at_or_above_the_channel_count_is_every_channel(method: type) -> None:
    model = conv_net(2)
    x = torch.randn(3, 2, 8, 8)
    options = {} if method is ScoreCAM else {"samples": 2}
    if method is SSCAM:
        options["seed"] = 3
    every = _raw(method(model, "4", **options), x)
    torch.testing.assert_close(_raw(method(model, "4", top_channels=5, **options), x), every)
    fewer = _raw(method(model, "4", top_channels=2, **options), x)
    assert not torch.allclose(fewer, every)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_channels": 0}, "top_channels: got 0"),
        ({"top_channels": 2.0}, "top_channels: got 2.0"),
        ({"rank_by": "max"}, "rank_by: got 'max'; allowed: \\['mean', 'variance'\\]"),
        ({"batch_size": 0}, "batch_size: got 0"),
    ],
)
def test_score_cam_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CamkitValueError, match=message):
        ScoreCAM(conv_net(2), "4", **options)


class RowCounter:
    """Counts the input rows the model runs on."""

    def __init__(self, model: nn.Module) -> None:
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, module: nn.Module, args: Any) -> None:
        self.rows += len(args[0])


@pytest.mark.parametrize("method", [ScoreCAM, ISCAM], ids=lambda m: m.__name__)
def test_constant_channels_are_scored_once_per_sample(method: type) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 4)
    ).eval()
    with torch.no_grad():
        model[0].bias[[1, 4]] = -100.0  # channels 1 and 4 are all zeros after the ReLU
    x = torch.randn(3, 2, 8, 8)
    options = {"samples": 2} if method is ISCAM else {}
    cam = method(model, "1", batch_size=5, **options)
    counter = RowCounter(model)
    maps = _raw(cam, x, torch.tensor([0, 1, 2]))
    counter.handle.remove()
    passes = options.get("samples", 1)
    assert counter.rows == 3 + passes * 3 * 4 + 3  # explained, 4 live channels, zero input
    # the same maps as running every channel
    unskipped = type("Unskipped", (method,), {"zero_masks_stay_zero": False})
    counter = RowCounter(model)
    expected = _raw(unskipped(model, "1", batch_size=5, **options), x, torch.tensor([0, 1, 2]))
    counter.handle.remove()
    assert counter.rows == 3 + passes * 3 * 6
    torch.testing.assert_close(maps, expected)
    assert torch.isfinite(maps).all()
