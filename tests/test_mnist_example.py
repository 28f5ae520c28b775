"""The MNIST worked example: its data checks, its shipped weights, and a smoke run."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

import camkit
from camkit import GradCAM, LeGrad
from examples.mnist.__main__ import main
from examples.mnist.data import DEFAULT_ROOT, FILES, MnistDataError, load_split
from examples.mnist.localization import (
    localize,
    stroke_mask,
    uniform_random_maps,
)
from examples.mnist.model import MnistNet
from examples.mnist.train import accuracy, load, train
from examples.mnist.vit import DEFAULT_VIT_WEIGHTS, MnistViT

LABELS = FILES["test"][1]


def _copy_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(DEFAULT_ROOT, root)
    for f in root.iterdir():
        f.chmod(0o644)
    return root


def _replace(root: Path, name: str, payload: bytes, fix_sum: bool = True) -> None:
    (root / name).write_bytes(payload)
    if fix_sum:
        sums = (root / "SHA256SUMS").read_text().splitlines()
        digest = hashlib.sha256(payload).hexdigest()
        sums = [f"{digest}  {name}" if line.endswith(name) else line for line in sums]
        (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def _labels(root: Path) -> bytes:
    return gzip.decompress((root / LABELS).read_bytes())


def test_the_model_has_4010_parameters_and_the_named_layer() -> None:
    model = MnistNet()
    assert sum(p.numel() for p in model.parameters()) == 4010
    assert isinstance(model.get_submodule("features.relu"), torch.nn.ReLU)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_loader_reads_and_scales(tmp_path: Path) -> None:
    split = load_split("test")
    assert split.images.shape == (10_000, 1, 28, 28)
    assert split.images.dtype == torch.float32
    assert float(split.images.min()) == 0.0
    assert float(split.images.max()) == 1.0
    assert split.labels.tolist()[:5] == [7, 2, 1, 0, 4]
    assert torch.bincount(split.labels).tolist()[0] == 980


def test_missing_file(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    (root / LABELS).unlink()
    with pytest.raises(MnistDataError, match=rf"{LABELS}: missing"):
        load_split("test", root)


def test_bad_checksum(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    data = bytearray(_labels(root))
    data[100] = (data[100] + 1) % 10
    _replace(root, LABELS, gzip.compress(bytes(data)), fix_sum=False)
    with pytest.raises(MnistDataError, match=rf"{LABELS}: SHA-256 is .* \(corrupt file\)"):
        load_split("test", root)


def test_bad_magic(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    data = (2051).to_bytes(4, "big") + _labels(root)[4:]
    _replace(root, LABELS, gzip.compress(data))
    with pytest.raises(MnistDataError, match=rf"{LABELS}: magic number 2051, expected 2049"):
        load_split("test", root)


def test_short_file(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    _replace(root, LABELS, gzip.compress(_labels(root)[:-10]))
    with pytest.raises(MnistDataError, match=r"9990 data bytes, expected 10000 \(truncated\)"):
        load_split("test", root)


def test_truncated_gzip(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    _replace(root, LABELS, (root / LABELS).read_bytes()[:-100])
    with pytest.raises(MnistDataError, match=r"not a complete gzip file"):
        load_split("test", root)


def test_the_vit_has_its_attention_probabilities_on_named_modules() -> None:
    torch.manual_seed(0)
    model = MnistViT().eval()
    assert sum(p.numel() for p in model.parameters()) == 28_202
    seen = []
    for i in range(3):
        model.get_submodule(f"blocks.{i}.attn.probs").register_forward_hook(
            lambda m, args, out: seen.append(out)
        )
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [tuple(p.shape) for p in seen] == [(2, 4, 50, 50)] * 3  # 7 x 7 patches and CLS
    for probs in seen:
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 50))
        assert bool((probs >= 0).all())


def test_the_vit_output_is_its_head_on_the_last_blocks_tokens() -> None:
    torch.manual_seed(0)
    model = MnistViT().eval()
    x = torch.randn(3, 1, 28, 28)
    captured = []
    model.blocks[-1].register_forward_hook(lambda m, args, out: captured.append(out))
    output = model(x)
    torch.testing.assert_close(model.classify(captured[0]), output)


def test_shipped_vit_weights_and_legrad_on_strokes() -> None:
    checkpoint, history = load(DEFAULT_VIT_WEIGHTS, MnistViT)
    test = load_split("test")
    score = accuracy(checkpoint, test)
    assert score >= 0.965
    assert history.test_accuracy[-1] == pytest.approx(score, abs=1e-6)
    vit = checkpoint.model
    blocks = ["blocks.1", "blocks.2"]  # the last two, as the paper's code
    legrad = LeGrad(vit, [f"{b}.attn.probs" for b in blocks], blocks=blocks, head=vit.classify)
    images = test.images[:300]
    maps = legrad(checkpoint.prepare(images))
    assert maps.shape == (300, 28, 28)
    strokes = stroke_mask(images)
    random_mass = localize(uniform_random_maps(300, (28, 28)), strokes).mass.nanmean()
    # This small ViT spreads its evidence over the background too (so does Grad-CAM on it):
    # LeGrad is above chance on strokes, not far above.
    assert localize(maps, strokes).mass.nanmean() > 1.15 * random_mass


def test_shipped_weights_reach_99_percent() -> None:
    checkpoint, history = load()
    score = accuracy(checkpoint, load_split("test"))
    assert score >= 0.99
    assert history.seconds <= 90
    assert history.test_accuracy[-1] == pytest.approx(score, abs=1e-6)


def test_trained_maps_concentrate_on_strokes() -> None:
    checkpoint, _ = load()
    test = load_split("test")
    images = checkpoint.prepare(test.images[:500])
    strokes = stroke_mask(test.images[:500])
    random_mass = localize(uniform_random_maps(500, (28, 28)), strokes).mass.nanmean()
    # The design card's line, verbatim: class 3 for every image.
    maps = GradCAM(checkpoint.model, "features.relu")(images, target=3)
    assert maps.shape == (500, 28, 28)
    assert localize(maps, strokes).mass.nanmean() > random_mass + 0.03
    # The predicted class: about twice the strokes' share of the image.
    predicted = GradCAM(checkpoint.model, "features.relu")(images)
    assert localize(predicted, strokes).mass.nanmean() > 1.6 * random_mass


def test_localize_by_hand() -> None:
    strokes = torch.tensor([[[True, False], [False, False]]] * 3)
    maps = torch.tensor([[[3.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]], [[0.0] * 2] * 2])
    result = localize(maps, strokes)
    assert result.mass[:2].tolist() == [0.75, 0.0]
    assert result.mass[2].isnan()
    assert result.hit.tolist() == [1.0, 0.0, 0.0]
    assert result.area.tolist() == [0.25] * 3


def test_smoke_run_writes_every_figure_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "--out",
            str(out),
            "--epochs",
            "1",
            "--limit-train",
            "512",
            "--limit-test",
            "300",
            "--vit-epochs",
            "1",
            "--eval-images",
            "100",
            "--quiet",
            "--full",
        ]
    )
    assert code == 0
    report = (out / "report.md").read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == 20  # the method comparison among them
    assert out / "figures" / "method_comparison.png" in figures
    for path in figures:
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3
        assert min(pixels.shape[:2]) > 100
        assert pixels.std() > 0.01  # not a blank image
        assert f"figures/{path.name}" in report
    for section in (
        "## Accuracy",
        "## Localization on strokes",
        "## Evaluating the explanations",
        "## A vision transformer: LeGrad",
        "| LeGrad |",
        "## Sanity checks",
        "## Results and discussion",
        "## The whole test set, to browse",
        "[viewer/index.html](viewer/index.html)",
    ):
        assert section in report
    for method in ("gradcam", "scorecam"):  # the viewer's two stores, of the 300 test images
        store = camkit.MapStore(out / "maps" / method)
        assert store.complete and len(store) == 300 and store.verify().ok
    assert (out / "viewer" / "index.html").is_file()
    assert list((out / "viewer" / "sheets").glob("other-*.jpg"))  # Score-CAM's maps
    _, history = load(out / "weights.pt")
    assert len(history.loss) == 1
    _, vit_history = load(out / "vit-weights.pt", MnistViT)
    assert len(vit_history.loss) == 1


def test_the_default_run_scores_the_main_methods_and_names_the_full_run(tmp_path: Path) -> None:
    from examples.mnist.comparison import MAIN_METHODS

    out = tmp_path / "report"
    argv = ["--out", str(out), "--epochs", "1", "--limit-train", "512", "--limit-test", "300"]
    assert main([*argv, "--eval-images", "100", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == 19  # all but the vision transformer's
    for path in figures:
        assert f"figures/{path.name}" in report
    rows = {line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")}
    assert set(MAIN_METHODS) <= rows
    assert "uniform random" in rows  # compare's random-map baseline
    assert not {"LeGrad", "SESS", "FullGrad", "Score-CAM TTA"} & rows
    # every mean carries its rank among the rows: "0.123 (2)"
    grad_cam = next(line for line in report.splitlines() if line.startswith("| Grad-CAM |"))
    assert all(re.fullmatch(r"-?[\d.]+ \(\d+\)", cell.strip())
               for cell in grad_cam.split("|")[2:-2])  # fmt: skip
    assert "## More methods, and a vision transformer" in report
    assert "python -m examples.mnist --full" in report
    assert not (out / "vit-weights.pt").exists()


def test_training_is_reproducible() -> None:
    data = load_split("train")
    subset = type(data)(data.images[:256], data.labels[:256])
    first, _ = train(subset, epochs=1, batch_size=64, progress=False)
    second, _ = train(subset, epochs=1, batch_size=64, progress=False)
    third, _ = train(subset, epochs=1, batch_size=64, progress=False, seed=1)
    a, b, c = (ck.model.state_dict() for ck in (first, second, third))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_progress_refreshes_a_few_times_a_second(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = load_split("train")
    subset = type(data)(data.images[:3000], data.labels[:3000])
    _, history = train(subset, epochs=1, batch_size=4, progress=True)  # 750 batches
    written = capsys.readouterr().err
    assert "loss=" in written  # the postfix is still shown
    refreshes = written.count("\r")
    assert refreshes <= 3 * history.seconds + 5, (refreshes, history.seconds)
