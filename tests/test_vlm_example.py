"""The vision-language example: its data, its shipped model's answers and maps, and a smoke
run of the whole example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import camkit
from camkit.metrics import pointing_game
from examples.mnist.data import load_split
from examples.vlm.__main__ import LAYER, TOLERANCE, main
from examples.vlm.data import (
    ASK,
    BOS,
    HEIGHT,
    IMAGE,
    LEFT,
    PROMPT,
    RIGHT,
    SLACK,
    WIDTH,
    Canvases,
    answers_for,
    canvases,
    prompts,
    said,
)
from examples.vlm.model import DigitTeller, generate
from examples.vlm.train import WEIGHTS


@pytest.fixture(scope="module")
def test_canvases() -> Canvases:
    split = load_split("test")
    return canvases(split.images[:100], split.labels[:100], seed=1)


def test_answers_name_the_left_digit_then_the_right_one() -> None:
    digits = torch.tensor([[7, 2], [0, 9]])
    assert said(answers_for(digits)) == [
        ["seven", "left", "two", "right"],
        ["zero", "left", "nine", "right"],
    ]
    assert prompts(2)[0].tolist() == [BOS, *[IMAGE] * (PROMPT - 2), ASK]


def test_each_digit_is_in_its_half_where_its_mask_says(test_canvases: Canvases) -> None:
    data = test_canvases
    assert data.images.shape == (100, 1, HEIGHT, WIDTH)
    assert (data.digits[:, 0] != data.digits[:, 1]).all()  # two different digits
    assert torch.equal(data.answers[:, [1, 3]], torch.tensor([LEFT, RIGHT]).expand(100, 2))
    assert torch.equal(data.answers[:, [0, 2]], data.digits)
    split = load_split("test")
    for i in range(10):
        for side in (0, 1):
            rows, cols = data.masks[i, side].nonzero().unbind(1)
            half = range(side * WIDTH // 2, side * WIDTH // 2 + 28 + SLACK)
            assert int(cols.min()) in half and int(cols.max()) in half
            assert int(rows.max()) < 28 + SLACK
        # the left digit is image i itself: its ink, at the offset where its mask starts
        ink = split.images[i, 0] > 0.3
        top, left = data.masks[i, 0].nonzero().min(0).values.tolist()
        margin = ink.nonzero().min(0).values.tolist()
        y, x = top - margin[0], left - margin[1]
        assert torch.equal(data.masks[i, 0, y : y + 28, x : x + 28], ink)
    assert torch.equal(canvases(split.images[:100], split.labels[:100], seed=1).images, data.images)


def test_the_shipped_model_answers_and_its_words_point_at_their_digits(
    test_canvases: Canvases,
) -> None:
    data = test_canvases
    model = DigitTeller()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.eval()
    answers = generate(model, data.images, prompts(len(data)))
    assert float((answers == data.answers).all(1).float().mean()) >= 0.85
    right = (answers[:, [0, 2]] == data.digits).all(1)
    sequences = torch.cat([prompts(len(data)), answers], 1)
    cam = camkit.LayerCAM(model, LAYER)
    maps = cam(data.images, camkit.TokenTarget(answers), forward_kwargs={"input_ids": sequences})
    assert maps.shape == (100, 4, HEIGHT, WIDTH)
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(maps.shape, generator=generator)
    for word, digit in ((0, 0), (2, 1)):
        hit = pointing_game(maps[right, word], data.masks[right, digit], tolerance=TOLERANCE)
        chance = pointing_game(noise[right, word], data.masks[right, digit], tolerance=TOLERANCE)
        assert hit.summary >= 0.9 and hit.summary >= chance.summary + 0.5
        # and not on the other digit: the word's map tells the two apart
        other = pointing_game(maps[right, word], data.masks[right, 1 - digit], tolerance=TOLERANCE)
        assert other.summary <= 0.1


def test_the_example_runs_end_to_end(tmp_path: Path) -> None:
    assert main(["--no-train", "--test-size", "16", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["hit_rate"]) == {
        "Grad-CAM", "Grad-CAM++", "HiResCAM", "LayerCAM", "TAM", "uniform random"
    }  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "| LayerCAM |" in report and "first number word" in report
    for name in ("canvas-0-layercam.png", "canvas-1-tam.png"):
        assert f"![{name}]({name})" in report
        assert (tmp_path / name).stat().st_size > 5_000
