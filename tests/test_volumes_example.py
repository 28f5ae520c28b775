"""The volumes-and-video example: its data, its shipped networks' maps, and a smoke run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.metrics import pointing_game
from examples.mnist.data import load_split
from examples.volumes.__main__ import LAYER, TOLERANCE, main
from examples.volumes.data import (
    DEPTH,
    DIGIT,
    FRAMES,
    SIDE,
    THICKNESS,
    Placed,
    clips,
    shrink,
    volumes,
)
from examples.volumes.model import ClipNet, VolumeNet
from examples.volumes.train import WEIGHTS, accuracy

Digits = tuple[Tensor, Tensor]


@pytest.fixture(scope="module")
def test_digits() -> Digits:
    split = load_split("test")
    return split.images[:60], split.labels[:60]


def test_a_volume_holds_its_digit_as_a_slab_where_its_mask_says(test_digits: Digits) -> None:
    images, labels = test_digits
    placed = volumes(images[:8], labels[:8], seed=3)
    assert placed.inputs.shape == (8, 1, DEPTH, SIDE, SIDE)
    digits = shrink(images[:8])
    for i in range(8):
        depths = placed.masks[i].any(dim=(1, 2)).nonzero()[:, 0]
        assert len(depths) == THICKNESS and int(depths[-1] - depths[0]) == THICKNESS - 1
        z = int(depths[0])
        rows, cols = placed.masks[i, z].nonzero().unbind(1)
        top, left = int(rows.min()), int(cols.min())
        # the ink of the shrunk digit, placed where the mask begins (up to its empty margin)
        ink = digits[i] > 0.3
        margin = ink.nonzero().min(0).values
        y, x = top - int(margin[0]), left - int(margin[1])
        assert torch.equal(placed.masks[i, z, y : y + DIGIT, x : x + DIGIT], ink)
    again = volumes(images[:8], labels[:8], seed=3)
    assert torch.equal(again.inputs, placed.inputs)


def test_a_clip_moves_its_digit_in_a_straight_line(test_digits: Digits) -> None:
    images, labels = test_digits
    placed = clips(images[:4], labels[:4], seed=5)
    assert placed.inputs.shape == (4, 1, FRAMES, SIDE, SIDE)
    for i in range(4):
        centres = torch.stack([m.nonzero().float().mean(0) for m in placed.masks[i]])
        steps = centres.diff(dim=0)  # equal steps, up to the rounding of each frame's place
        assert float((steps - steps.mean(0)).abs().max()) <= 1.0


@pytest.mark.parametrize(("name", "build", "make"), [
    ("volume", VolumeNet, volumes), ("clip", ClipNet, clips),
])  # fmt: skip
def test_the_shipped_networks_point_at_their_digit(
    test_digits: Digits, name: str, build: Callable[[], nn.Module], make: Callable[..., Placed]
) -> None:
    images, labels = test_digits
    placed = make(images, labels, seed=1)
    model = build()
    model.load_state_dict(torch.load(WEIGHTS[name], weights_only=True))
    model.eval()
    assert accuracy(model, placed.inputs, placed.labels) >= 0.7
    maps = camkit.GradCAM(model, LAYER)(placed.inputs, placed.labels)
    masks = placed.masks
    if name == "clip":
        assert maps.shape == (len(labels), FRAMES, SIDE, SIDE)
        maps, masks = maps.flatten(0, 1), masks.flatten(0, 1)
    hits = pointing_game(maps, masks, tolerance=TOLERANCE).summary
    random = pointing_game(torch.rand(maps.shape), masks, tolerance=TOLERANCE).summary
    assert hits >= 0.5 and hits >= random + 0.3, (hits, random)


def test_the_example_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["--out", str(out), "--train-size", "64", "--epochs", "1", "--test-size", "3"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["hit_rate"]["volume"]) == {
        "Grad-CAM", "Grad-CAM++", "Occlusion", "uniform random",
    }  # fmt: skip
    report = (out / "report.md").read_text()
    for name in ("volume-0-slices.png", "volume-0-grid.png", "clip-0-gradcam.png", "clip-0.gif"):
        assert (out / name).stat().st_size > 0
        assert name in report
