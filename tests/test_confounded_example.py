"""The confounded-MNIST example: its data, its masks, its guided steps, and a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import torch
import torch.nn.functional as F

from examples.confounded.__main__ import GUIDES, main
from examples.confounded.data import PLACES, SQUARE, confound, square_masks
from examples.confounded.train import RECEPTIVE_FIELDS, Guide, _step_function, layer_masks
from examples.mnist.data import Split, load_split
from examples.mnist.model import MnistNet


def _small_split(n: int = 500) -> Split:
    test = load_split("test")
    return Split(test.images[:n], test.labels[:n])


def test_the_squares_sit_where_digits_rarely_are() -> None:
    images = load_split("test").images
    masks = square_masks(torch.arange(len(PLACES)))
    assert masks.sum(dim=(1, 2, 3)).tolist() == [SQUARE * SQUARE] * len(PLACES)
    assert masks.sum(0).max() == 1  # the ten places do not overlap
    for mask in masks:
        touched = (images * mask).flatten(1).amax(1) > 0
        assert float(touched.float().mean()) < 0.01  # as the data's docstring says


def test_training_places_give_the_label_away_and_test_places_do_not() -> None:
    split = _small_split()
    train = confound(split, randomize=False)
    test = confound(split, randomize=True, seed=3)
    assert torch.equal(train.places, split.labels)
    agreement = float((test.places == split.labels).float().mean())
    assert 0.03 < agreement < 0.2  # chance is 10 %
    for data in (train, test):
        inside = data.split.images * data.masks
        assert bool(inside[data.masks.bool()].eq(1).all())  # the square is full brightness
        assert torch.equal(data.split.images * (1 - data.masks), split.images)  # digit intact


def test_layer_masks_are_the_receptive_fields() -> None:
    # features.relu's cell c sees input pixels 2c .. 2c + 13; features.relu1's r .. r + 4
    for layer, (size, stride) in RECEPTIVE_FIELDS.items():
        for row in range(28):
            mask = torch.zeros(1, 1, 28, 28)
            mask[..., row, 0] = 1
            cells = layer_masks(mask, layer)[0, 0, :, 0].nonzero()[:, 0].tolist()
            cells_per_side = (28 - size) // stride + 1
            expected = [c for c in range(cells_per_side) if stride * c <= row < stride * c + size]
            assert cells == expected, (layer, row)


def test_a_camkit_step_runs_the_model_once_and_penalizes_the_square() -> None:
    model = MnistNet().train()
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(1))
    split = _small_split(16)
    data = confound(split, randomize=False)
    x, y = data.split.images, data.split.labels
    guide = GUIDES[1]
    task, penalty = _step_function(model, guide)(x, y, data.masks)
    handle.remove()
    assert len(calls) == 1 and penalty > 0
    torch.testing.assert_close(task, F.cross_entropy(model(x), y))
    (task + penalty).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # no square in the masks: no penalty
    _, none = _step_function(model, guide)(x, y, torch.zeros_like(data.masks))
    assert float(none.detach()) == 0.0


def test_the_rrr_step_is_the_input_gradient_penalty() -> None:
    model = MnistNet().eval()
    data = confound(_small_split(8), randomize=False)
    x, y, masks = data.split.images, data.split.labels, data.masks
    _, penalty = _step_function(model, Guide("rrr", kind="rrr", weight=2.0))(x, y, masks)
    inputs = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(inputs).log_softmax(1).sum(), inputs)
    torch.testing.assert_close(penalty, 2.0 * (masks * gradient).square().sum() / len(x))


def test_smoke_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["--out", str(out), "--epochs", "1", "--limit-train", "256", "--limit-test", "128"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == [g.name for g in GUIDES]
    assert all(0.0 <= r["randomized"] <= 1.0 and r["seconds"] > 0 for r in rows)
    report = (out / "report.md").read_text()
    assert all(g.name in report for g in GUIDES)
    for figure in ("construction.png", "maps.png"):
        assert mpimg.imread(out / figure).shape[0] > 100
