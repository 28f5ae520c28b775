"""The ``camkit`` command: explain and evaluate image folders, its help, its errors, torchrun."""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import camkit
from camkit.cli import METHODS, SEEDED, ImageFiles, load_model, main, parser
from examples.mnist.data import load_split
from examples.mnist.train import load

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "examples" / "mnist" / "weights.pt"
MNIST = ["--model", "examples.mnist.model:MnistNet", "--weights", str(WEIGHTS)]
MNIST += ["--layer", "features.relu", "--channels", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of 23 MNIST test digits (class folders 0 to 9), as PNG files."""
    root = tmp_path_factory.mktemp("digits")
    test = load_split("test")
    for i in range(23):
        folder = root / str(int(test.labels[i]))
        folder.mkdir(exist_ok=True)
        pixels = (test.images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def _standardization() -> list[str]:
    checkpoint, _ = load(WEIGHTS)
    return ["--mean", str(checkpoint.mean), "--std", str(checkpoint.std)]


def test_explain_writes_the_store_and_overlays(tree: Path, tmp_path: Path) -> None:
    store_dir, overlays = tmp_path / "store", tmp_path / "overlays"
    argv = ["explain", str(tree), *MNIST, *_standardization(), "--batch-size", "8"]
    assert main([*argv, "--store", str(store_dir), "--overlays", str(overlays)]) == 0
    checkpoint, _ = load(WEIGHTS)
    dataset = ImageFiles([tree], channels=1, mean=[checkpoint.mean], std=[checkpoint.std])
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    cam = camkit.GradCAM(checkpoint.model, "features.relu")
    # batched as the command batches (8 at a time): the same kernels on the same machine give
    # the same bits, which the store keeps exactly
    parts = [cam.explain(x[i : i + 8]) for i in range(0, len(x), 8)]
    maps = torch.cat([p.maps for p in parts])
    classes = torch.cat([p.classes for p in parts if p.classes is not None])
    store = camkit.MapStore(store_dir)
    assert store.complete and len(store) == 23
    for i in range(23):
        record = store[i]
        assert torch.equal(record.map, maps[i]), i
        assert record.prediction == record.target == int(classes[i])
    pngs = sorted(p.relative_to(overlays) for p in overlays.rglob("*.png"))
    assert pngs == sorted(Path(n).with_suffix(".png") for n in dataset.names)
    assert np.asarray(Image.open(overlays / pngs[0])).shape == (28, 28, 3)


# camkit's explainers the command does not build, and why (a new explainer must be added to
# camkit.cli.METHODS or here)
NOT_ON_THE_COMMAND_LINE = {
    "CAM": "needs fc=, the model's classifier layer",
    "DeepFeatureFactorization": "needs head=, the layers after the explained one",
    "FullGrad": "takes the model's biased layers, not one layer",
    "GuidedBackprop": "takes no layer; maps with the input's channels",
    "GuidedGradCAM": "maps with the input's channels, which the metrics do not take",
    "OcclusionSensitivity": "takes a mask size, not a layer",
    "LeGrad": "takes a vision transformer's attention layers",
    "GradECLIP": "takes a CLIP model's attention block",
    "SESS": "wraps another explainer",
}


def test_the_command_offers_every_explainer_built_from_a_layer() -> None:
    explainers = {
        name for name in camkit.__all__
        if isinstance(getattr(camkit, name), type)
        and not isinstance(getattr(camkit, name), types.GenericAlias)  # a class on 3.10
        and issubclass(getattr(camkit, name), camkit.Explainer)
        and name not in ("Explainer", "BaseCAM")
    }  # fmt: skip
    assert set(METHODS) | set(NOT_ON_THE_COMMAND_LINE) == explainers
    assert not set(METHODS) & set(NOT_ON_THE_COMMAND_LINE)
    assert set(SEEDED) <= set(METHODS)
    for name in SEEDED:  # what --seed is given to
        assert "seed" in inspect.signature(getattr(camkit, name)).parameters


@pytest.mark.parametrize("method", METHODS)
def test_explain_stores_each_methods_maps(method: str, tree: Path, tmp_path: Path) -> None:
    """Every method the command offers writes the maps it gives from Python, seeded by
    ``--seed`` where it draws random numbers (so that a stored run can resume)."""
    store_dir = tmp_path / "store"
    argv = ["explain", str(tree), *MNIST, *_standardization(), "--batch-size", "16"]
    assert main([*argv, "--method", method, "--seed", "3", "--store", str(store_dir)]) == 0
    checkpoint, _ = load(WEIGHTS)
    dataset = ImageFiles(tree, channels=1, mean=[checkpoint.mean], std=[checkpoint.std])
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    seeded: dict[str, Any] = {"seed": 3} if method in SEEDED else {}
    cam = getattr(camkit, method)(checkpoint.model, "features.relu", **seeded)
    maps = torch.cat([cam(x[i : i + 16]) for i in range(0, len(x), 16)])
    store = camkit.MapStore(store_dir)
    assert store.complete and len(store) == len(x)
    assert torch.equal(torch.stack([store[i].map for i in range(len(x))]), maps)
    assert store.config["explainer"] == cam.settings()
    # the same command again finds the store complete: the maps and settings are the same
    assert main([*argv, "--method", method, "--seed", "3", "--store", str(store_dir)]) == 0


def test_the_labels_come_from_the_class_folders(tree: Path) -> None:
    dataset = ImageFiles([tree], channels=1, mean=[0.0], std=[1.0])
    assert dataset.classes == sorted(dataset.classes) and len(dataset) == 23
    for name, label in zip(dataset.names, dataset.labels, strict=True):
        assert dataset.classes[label] == Path(name).parts[0]
    image = dataset.load(0)
    assert image.shape == (1, 28, 28) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    for one in (tree, str(tree)):  # one path alone (a str is a sequence of characters too)
        alone = ImageFiles(one, channels=1, mean=[0.0], std=[1.0])
        assert alone.files == dataset.files and alone.labels == dataset.labels


def test_evaluate_reports_what_camkit_metrics_compute(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(tree), *MNIST, *_standardization(), "--target", "label"]
    chosen = ["deletion", "average_drop", "sufficiency", "faithfulness_estimate"]
    assert main([*argv, "--metrics", *chosen, "--json", str(out)]) == 0
    reported = json.loads(out.read_text())
    checkpoint, _ = load(WEIGHTS)
    dataset = ImageFiles([tree], channels=1, mean=[checkpoint.mean], std=[checkpoint.std])
    expected = camkit.metrics.evaluate(
        checkpoint.model,
        camkit.GradCAM(checkpoint.model, "features.relu"),
        DataLoader(dataset, batch_size=32),
        {name: getattr(camkit.metrics, name) for name in chosen},
        target="label",
        progress=False,
    )
    assert reported["images"] == 23
    assert reported["metrics"] == {name: r.summary for name, r in expected.items()}


def test_evaluate_says_on_how_many_images_a_metric_was_defined(
    tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A metric undefined (NaN) on some images: evaluate says on how many it was defined,
    and a comparison on how many the candidates were compared."""
    original = camkit.metrics.average_drop

    @functools.wraps(original)  # its name: compare knows lower is better
    def undefined_on_even_rows(*args: Any, **kwargs: Any) -> camkit.metrics.MetricResult:
        result = original(*args, **kwargs)
        values = result.values.clone()
        values[::2] = float("nan")  # 12 of the 23 images, in one batch of 32
        return camkit.metrics.MetricResult(result.name, values, float(values.nanmean()))

    monkeypatch.setattr(camkit.metrics, "average_drop", undefined_on_even_rows)
    argv = ["evaluate", str(tree), *MNIST, "--metrics", "average_drop", "deletion"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    drop, deletion = (next(line for line in lines if name in line)
                      for name in ("average_drop", "deletion"))  # fmt: skip
    assert drop.endswith("(defined on 11 of 23)") and "defined" not in deletion
    assert main([*argv, "--methods", "GradCAM", "LayerCAM"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  average_drop (lower is better; compared on 11 of 23)" in lines
    assert "  deletion (lower is better)" in lines


def test_a_torchvision_model_with_random_weights(tmp_path: Path) -> None:
    for i in range(3):
        rgb = (np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"photo{i}.jpg")
    out = tmp_path / "store"
    argv = ["explain", str(tmp_path), "--model", "torchvision:resnet18", "--layer", "layer4"]
    assert (
        main([*argv, "--size", "64", "--store", str(out), "--dtype", "uint8", "--no-progress"]) == 0
    )
    store = camkit.MapStore(out)
    assert len(store) == 3 and store.map(2).shape == (64, 64) and store.config["dtype"] == "uint8"


def test_help_documents_every_option() -> None:
    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)
    run = subprocess.run(
        [sys.executable, "-m", "camkit", "explain", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0 and "--overlays" in run.stdout and "--store" in run.stdout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"--model": "resnet18"}, "--model: got 'resnet18'; allowed: torchvision:NAME"),
        ({"--model": "torchvision:resnet19"}, "did you mean resnet18"),
        ({"--model": "no_such_package.models:Net"}, "--model: cannot import 'no_such_package"),
        ({"--model": "examples.mnist.model:Nope"}, "has no callable 'Nope'"),
        ({"--model": "examples.mnist.data:load_split"}, "load_split() failed: TypeError"),
        ({"--model": "builtins:dict"}, "returned a dict, not a torch.nn.Module"),
        ({"--weights": "missing.pt"}, "--weights: 'missing.pt' does not exist"),
        ({"--weights": "README.md"}, "not a state_dict that loads safely"),
        ({"--layer": "features.rel"}, "closest names: 'features.relu'"),
        ({"inputs": "nowhere"}, "inputs: 'nowhere' does not exist"),
        ({"--mean": "0.1 0.2"}, "--mean: got 2 values"),
        ({"inputs": "README.md"}, "is not an image file"),
    ],
)
def test_clear_errors(
    tree: Path, changes: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"inputs": str(tree), "--model": "examples.mnist.model:MnistNet"}
    options |= {"--weights": str(WEIGHTS), "--layer": "features.relu", **changes}
    argv = ["explain", options.pop("inputs"), "--store", "unused", "--channels", "1"]
    for flag, value in options.items():
        argv += [flag, *value.split()]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("camkit explain: error: ")
    assert message in error
    assert not Path("unused").exists()


@pytest.mark.parametrize(
    ("command", "changes", "message"),
    [
        # refused by the option's type (argparse's usage line and error)
        ("explain", ["--target", "99999999999999999999"],
         "argument --target: expected 'predicted', 'label' or a class index (an int from 0)"),
        ("explain", ["--target", "-1"], "argument --target: expected 'predicted'"),
        ("explain", ["--size", "99999999999999999999"],
         "argument --size: expected N or H,W of ints from 1 to 32768"),
        ("explain", ["--store", ""], "argument --store: expected a path, got an empty string"),
        ("explain", ["--overlays", " "], "argument --overlays: expected a path, got an empty"),
        ("evaluate", ["--json", ""], "argument --json: expected a path, got an empty string"),
        ("view", ["--out", ""], "argument --out: expected a path, got an empty string"),
        # refused by camkit, before any work
        ("explain", ["--batch-size", "99999999999999999999"],
         "--batch-size: got 99999999999999999999; allowed: 1 to 2147483647"),
        ("explain", ["--workers", "99999999999999999999"],  # spawned workers until out of memory
         "--workers: got 99999999999999999999; allowed: 0 (load in this process) to"),
        ("explain", ["--workers", "-1"], "--workers: got -1; allowed: 0"),
        ("explain", ["--std", "inf"], "--std: got [inf]; allowed: positive finite numbers"),
        ("explain", ["--mean", "inf"], "--mean: got [inf]; allowed: finite numbers"),
        ("explain", ["--store", "{file}"], "--store: '{file}' is a file; give a folder"),
        ("explain", ["--overlays", "{file}"], "--overlays: '{file}' is a file; give a folder"),
        ("evaluate", ["--json", "{folder}"], "--json: '{folder}' is a folder; give a file's path"),
        ("evaluate", ["--methods", "GradCAM", "--csv", "{folder}/missing/table.csv"],
         "--csv: the folder of '{folder}/missing/table.csv' does not exist; create it first"),
        ("view", ["--out", "{file}"], "--out: '{file}' is a file; give a folder"),
    ],
)  # fmt: skip
def test_values_out_of_range_are_refused_before_any_work(
    tree: Path,
    tmp_path: Path,
    command: str,
    changes: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "a-file").write_text("not camkit's")
    store = tmp_path / "store"
    names = {"file": str(folder / "a-file"), "folder": str(folder)}
    changes = [change.format(**names) for change in changes]
    if command == "view":
        assert main(["explain", str(tree), *MNIST, "--store", str(store)]) == 0
        capsys.readouterr()
        argv = ["view", str(store), "--out", str(folder / "site"), "--no-progress", *changes]
    else:
        argv = [command, str(tree), *MNIST]
        argv += ["--store", str(folder / "store")] if command == "explain" else []
        argv += ["--metrics", "average_drop"] if command == "evaluate" else []
        argv += changes  # after the defaults: the last of an option's values counts
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's refusal
        status = exit_.code
    error = capsys.readouterr().err
    assert status == 2, error
    assert error.splitlines()[-1].startswith(f"camkit {command}: error: ")
    assert message.format(**names) in error and "Traceback" not in error
    assert sorted(p.name for p in folder.iterdir()) == ["a-file"]  # nothing written
    assert (folder / "a-file").read_text() == "not camkit's"


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(camkit.CamkitValueError, match="does not fit the model: missing"):
        load_model("examples.mnist.model:MnistNet", str(path))
    state = load_model("examples.mnist.model:MnistNet").state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # saved from DDP
    loaded = load_model("examples.mnist.model:MnistNet", str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())


def _camkit_under_torchrun(*argv: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2 -m camkit ARGV``, which must succeed."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run(
        [*launch, "-m", "camkit", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,  # seconds to run; a hang (as at exit on torch 2.4) fails here
    )
    assert run.returncode == 0, run.stderr
    return run


def test_explain_under_torchrun_equals_one_process(tree: Path, tmp_path: Path) -> None:
    argv = ["explain", str(tree), *MNIST, *_standardization(), "--batch-size", "4"]
    assert main([*argv, "--store", str(tmp_path / "one")]) == 0
    run = _camkit_under_torchrun(*argv, "--store", str(tmp_path / "two"))
    assert run.stdout.count("camkit explain: wrote 23 maps") == 1  # rank 0 reports
    one, two = camkit.MapStore(tmp_path / "one"), camkit.MapStore(tmp_path / "two")
    assert two.complete and one.indices == two.indices == list(range(23))
    assert all(torch.equal(v, two.records()[k]) for k, v in one.records().items())
    assert all(torch.equal(one.map(i), two.map(i)) for i in range(23))


def test_evaluate_compares_methods_under_torchrun_as_one_process(
    tree: Path, tmp_path: Path
) -> None:
    """A comparison runs evaluate once per candidate: under torchrun they share one process
    group, and the table equals one process's."""
    net = ["--model", "examples.mnist.model:MnistNet", "--weights", str(WEIGHTS)]
    argv = ["evaluate", str(tree), *net, "--channels", "1", "--no-progress", *_standardization()]
    argv += ["--methods", "GradCAM", "LayerCAM", "--layer", "features.relu"]
    argv += ["--metrics", "deletion", "--target", "label", "--batch-size", "4"]
    assert main([*argv, "--json", str(tmp_path / "one.json")]) == 0
    _camkit_under_torchrun(*argv, "--json", str(tmp_path / "two.json"))
    one = json.loads((tmp_path / "one.json").read_text())["rows"]
    two = json.loads((tmp_path / "two.json").read_text())["rows"]
    assert len(one) == 3 and one == two


def _page_commands() -> list[list[str]]:
    """The ``camkit ...`` commands of the "Whole datasets" page, as argument lists."""
    import shlex

    text = (ROOT / "docs" / "datasets.rst").read_text()
    commands, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("$ camkit ") or current:
            current += " " + stripped.removeprefix("$ ").removesuffix("\\")
            if not stripped.endswith("\\"):
                commands.append(shlex.split(current)[1:])
                current = ""
    return commands


def test_the_datasets_page_commands_run(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = _page_commands()
    assert [c[0] for c in commands] == ["explain", "evaluate", "view"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # run "from the project's folder"
    (tmp_path / "mnist-png").symlink_to(tree)
    for command in commands:
        assert main([*command, "--no-progress"]) == 0, command
    assert (tmp_path / "mnist-viewer" / "index.html").is_file()
    store = camkit.MapStore(tmp_path / "mnist-maps-cli")
    assert len(store) == 23 and store.config["dtype"] == "uint8"
    assert len(list((tmp_path / "mnist-overlays").rglob("*.png"))) == 23
    assert set(json.loads((tmp_path / "metrics.json").read_text())["metrics"]) == {
        "deletion",
        "insertion",
    }


# ----------------------------------------------------------------------------- the store's files


def _digit_png(path: Path, seed: int, size: tuple[int, int] = (28, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_sources_and_overlays_keep_every_input_apart(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for i, name in enumerate(["a/img0.png", "a/x.png", "b/img0.png"]):
        _digit_png(inputs / name, i)
    rgb = np.repeat((np.random.default_rng(9).random((28, 28, 1)) * 255).astype(np.uint8), 3, 2)
    Image.fromarray(rgb).save(inputs / "a" / "x.jpg")
    store_dir, overlays = tmp_path / "store", tmp_path / "overlays"
    argv = ["explain", str(inputs / "a"), str(inputs / "b"), *MNIST, "--store", str(store_dir)]
    assert main([*argv, "--overlays", str(overlays)]) == 0
    store = camkit.MapStore(store_dir)
    assert store.sources == ["a/img0.png", "a/x.jpg", "a/x.png", "b/img0.png"]
    assert [store[i].source for i in range(4)] == store.sources
    written = sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png"))
    assert written == ["a/img0.png", "a/x.jpg.png", "a/x.png", "b/img0.png"]  # 4 images, 4 files


def test_a_rerun_writes_every_overlay_it_is_asked_for(tree: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    argv = ["explain", str(tree), *MNIST, *_standardization(), "--store", str(store_dir)]
    assert main([*argv, "--overlays", str(tmp_path / "first")]) == 0
    assert main([*argv, "--overlays", str(tmp_path / "second")]) == 0  # nothing left to explain
    first = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*.png"))
    second = sorted(
        p.relative_to(tmp_path / "second") for p in (tmp_path / "second").rglob("*.png")
    )
    assert len(first) == 23 and first == second
    for name in first:  # drawn from the stored float32 maps: the same pixels
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "first" / name)),
            np.asarray(Image.open(tmp_path / "second" / name)),
        )


def test_16_bit_and_float_images_load_at_their_true_values(tmp_path: Path) -> None:
    ramp = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "wide.png")  # a 16-bit grayscale PNG
    with Image.open(tmp_path / "wide.png") as image:
        assert image.mode.startswith("I")
    dataset = ImageFiles([tmp_path / "wide.png"], channels=1, mean=[0.0], std=[1.0])
    loaded = dataset.load(0)[0].numpy()
    np.testing.assert_array_equal(loaded, ramp.astype(np.float32) / np.float32(65535))
    assert (loaded == 1.0).mean() < 0.01  # not clipped to 1 as an 8-bit conversion would
    rgb = ImageFiles([tmp_path / "wide.png"], channels=3, mean=[0.0], std=[1.0]).load(0)
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[2])
    resized = ImageFiles([tmp_path / "wide.png"], size=(16, 16), channels=1, mean=[0.0],
                         std=[1.0]).load(0)  # fmt: skip
    assert resized.shape == (1, 16, 16) and 0.0 <= float(resized.min()) < 0.1
    assert 0.9 < float(resized.max()) <= 1.0


def test_mixed_sizes_and_a_missing_device_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _digit_png(tmp_path / "in" / "small.png", 0, (28, 28))
    _digit_png(tmp_path / "in" / "large.png", 1, (32, 30))
    argv = ["explain", str(tmp_path / "in"), *MNIST, "--store", str(tmp_path / "store")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "images of different sizes" in error and "--size H,W" in error
    assert "Traceback" not in error
    assert main([*argv, "--size", "28"]) == 0
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    assert main([*argv, "--size", "28", "--device", missing]) == 2
    error = capsys.readouterr().err
    assert f"--device: got {missing!r}, but this machine has" in error
    assert "Traceback" not in error


def test_a_run_without_weights_resumes_with_its_seed(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "store"
    net = ["--model", "examples.mnist.model:MnistNet", "--layer", "features.relu"]
    argv = ["explain", str(tree), *net, "--channels", "1", "--no-progress", "--store"]
    assert main([*argv, str(store_dir)]) == 0
    assert "weights are random (seed 0)" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in store_dir.glob("shard-*")}
    assert main([*argv, str(store_dir)]) == 0  # the same random weights: it resumes
    assert {p.name: p.read_bytes() for p in store_dir.glob("shard-*")} == before
    assert main([*argv, str(store_dir), "--seed", "1"]) == 2  # other weights: refused
    assert "weights:" in capsys.readouterr().err
    assert main([*argv, str(store_dir), "--size", "32"]) == 2  # another input size: refused
    assert "dataset_options.size: None there, [32, 32] now" in capsys.readouterr().err


def test_verify_reports_damage_with_its_exit_status(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "store"
    argv = ["explain", str(tree), *MNIST, "--batch-size", "4", "--store", str(store_dir)]
    assert main(argv) == 0
    assert main(["verify", str(store_dir)]) == 0
    assert "every shard is intact" in capsys.readouterr().out
    shard = store_dir / "shard-000001.maps.npy"
    shard.write_bytes(shard.read_bytes()[:-7])
    assert main(["verify", str(store_dir)]) == 1
    out = capsys.readouterr().out
    assert "shard 1: shard-000001.maps.npy has" in out and "rerun the command" in out
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "holds no camkit map store" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="1 damaged shard"):
        assert main(argv) == 0  # the rerun computes the damaged shard again
    assert main(["verify", str(store_dir)]) == 0


def test_view_writes_a_page_of_a_store_over_its_images(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "store"
    argv = ["explain", str(tree), *MNIST, *_standardization(), "--target", "label"]
    assert main([*argv, "--store", str(store_dir)]) == 0
    site = tmp_path / "site"
    assert main(["view", str(store_dir), str(tree), "--out", str(site), "--no-progress"]) == 0
    assert f"wrote {site / 'index.html'}" in capsys.readouterr().out
    data = json.loads((site / "data.js").read_text().split("=", 1)[1].strip().rstrip(";"))
    assert data["columns"]["source"] == camkit.MapStore(store_dir).sources
    assert data["classes"] == sorted(p.name for p in tree.iterdir())  # the class folders
    assert data["sheets"]["kinds"] == ["overlay", "image", "map"]
    other = tmp_path / "other"
    _digit_png(other / "9" / "x.png", 0)
    assert main(["view", str(store_dir), str(other), "--out", str(site), "--no-progress"]) == 2
    assert "was written from other images" in capsys.readouterr().err


def test_evaluate_compares_methods_and_layers(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = ["--model", "examples.mnist.model:MnistNet", "--weights", str(WEIGHTS)]
    argv = ["evaluate", str(tree), *net, "--channels", "1", "--no-progress", *_standardization()]
    argv += ["--methods", "GradCAM", "LayerCAM", "--layers", "features.relu", "features.conv1"]
    argv += ["--metrics", "deletion", "road", "--target", "label"]
    paths = {kind: tmp_path / f"comparison.{kind}" for kind in ("json", "csv", "png")}
    code = main([*argv, "--json", str(paths["json"]), "--csv", str(paths["csv"]),
                 "--figure", str(paths["png"])])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "4 candidates and random maps" in out and "deletion (lower is better)" in out
    assert "road (lower is better)" in out  # most relevant first, camkit's default
    rows = json.loads(paths["json"].read_text())["rows"]
    names = {r["candidate"] for r in rows}
    assert names == {
        "GradCAM at features.relu", "GradCAM at features.conv1", "LayerCAM at features.relu",
        "LayerCAM at features.conv1", "random maps",
    }  # fmt: skip
    assert paths["csv"].read_text().startswith("candidate,metric,mean,low,high,rank")
    assert paths["png"].stat().st_size > 0
    # the same numbers as evaluate for one candidate
    one = ["evaluate", str(tree), *net, "--channels", "1", "--no-progress", *_standardization()]
    one += ["--layer", "features.relu", "--metrics", "deletion", "--target", "label"]
    assert main([*one, "--json", str(tmp_path / "one.json")]) == 0
    single = json.loads((tmp_path / "one.json").read_text())["metrics"]["deletion"]
    cell = next(r for r in rows if r["candidate"] == "GradCAM at features.relu"
                and r["metric"] == "deletion")  # fmt: skip
    assert cell["mean"] == pytest.approx(single, rel=1e-12)
    assert main([*one, "--csv", str(tmp_path / "x.csv")]) == 2
    assert "--csv, --figure: they write a comparison" in capsys.readouterr().err


def test_a_missing_layer_is_a_clear_error(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = ["--model", "examples.mnist.model:MnistNet", "--channels", "1", "--no-progress"]
    assert main(["explain", str(tree), *net, "--store", "unused"]) == 2
    assert "--layer: name the layer to explain" in capsys.readouterr().err
    assert not Path("unused").exists()
