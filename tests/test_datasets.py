"""Whole datasets: the map store, resuming after SIGKILL, refusals, full disks, torchrun."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import camkit
from camkit._store import shards
from camkit.datasets import MapStore, explain_dataset, pseudo_masks
from camkit.errors import CamkitStorageError, CamkitTypeError, CamkitValueError
from tests.dist_worker import BATCH_SIZE, SHARD_BATCHES, Digits, metrics, model
from tests.helpers import MNIST_LAYER, assert_untouched, snapshot

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "dist_worker.py")]
LENGTH = 37  # 10 batches of 4 (the last one short), 5 shards of 2 batches (the last short)


def _run(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess[str]:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
        ]
        if torchrun
        else [sys.executable]
    )
    command = [*launcher, str(ROOT / "tests" / "dist_worker.py"), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # a run takes seconds; one that hangs (as at exit on torch 2.4, see gather) fails here
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=300
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> MapStore:
    """An uninterrupted single-process run, in this process."""
    out = tmp_path_factory.mktemp("reference")
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    store = explain_dataset(
        cam, loader, out, target="label", shard_batches=SHARD_BATCHES, progress=False
    )
    assert store is not None
    return store


def _same_records(store: MapStore, reference: MapStore) -> bool:
    mine, theirs = store.records(), reference.records()
    return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())


def _assert_same(store: MapStore, reference: MapStore) -> None:
    assert store.complete and store.indices == list(range(LENGTH))
    assert _same_records(store, reference)
    for index in range(LENGTH):
        assert torch.equal(store.map(index), reference.map(index)), index


def test_the_store_holds_each_sample_as_an_independent_call_computes_it(
    reference: MapStore,
) -> None:
    data = Digits(LENGTH)
    net = model()
    cam = camkit.GradCAM(net, MNIST_LAYER)
    assert len(reference) == LENGTH and reference.complete
    for start in range(0, LENGTH, BATCH_SIZE):  # the same batches, explained directly
        x, y = data.x[start : start + BATCH_SIZE], data.y[start : start + BATCH_SIZE]
        result = cam.explain(x, y)
        predicted = net(x).argmax(1)
        for row in range(len(x)):
            record = reference[start + row]
            assert record.index == start + row
            assert record.target == int(y[row])
            assert record.prediction == int(predicted[row])
            assert record.score == pytest.approx(float(result.scores[row]), rel=1e-6)
            assert torch.equal(record.map, result.maps[row])
    assert 0 in reference and LENGTH - 1 in reference
    assert LENGTH not in reference and LENGTH + 1 not in reference  # the last shard's range
    assert -1 not in reference and True not in reference
    records = reference.records()
    assert records["index"].tolist() == list(range(LENGTH))
    assert records["target"].tolist() == data.y.tolist() and records["score"].dtype == torch.float32


def test_reading_one_map_does_not_load_the_rest(reference: MapStore) -> None:
    store = MapStore(reference.path)
    store.map(30)
    assert list(store._open) == [30 // (BATCH_SIZE * SHARD_BATCHES)]
    maps, _ = store._open[3]
    assert isinstance(maps, np.memmap)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 1e-3), ("uint8", 0.5 / 255)])
def test_smaller_storage(reference: MapStore, tmp_path: Path, dtype: str, tolerance: float) -> None:
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    store = explain_dataset(cam, loader, tmp_path, target="label", dtype=dtype, progress=False)
    assert store is not None
    stored = np.load(tmp_path / "shard-000000.maps.npy")
    assert stored.dtype == np.dtype(dtype)
    for index in range(LENGTH):
        assert (store.map(index) - reference.map(index)).abs().max() <= tolerance + 1e-7


def test_layer_resolution_maps(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(6, 1, 28, 28))
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    store = explain_dataset(cam, DataLoader(data, batch_size=4), tmp_path, upsample=False,
                            progress=False)  # fmt: skip
    assert store is not None and store.map(5).shape == (8, 8)
    assert store[5].target == store[5].prediction  # the predicted class was explained


def test_a_run_killed_with_sigkill_resumes_to_the_same_maps(
    reference: MapStore, tmp_path: Path
) -> None:
    killed = _run("explain", str(tmp_path), str(LENGTH), "33")  # dies reading sample 33
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = MapStore(tmp_path)
    assert not partial.complete
    # shards 0 to 2 are written; shard 3 may still have been in the writer's hands
    assert partial.indices in (list(range(24)), list(range(32)))
    with pytest.raises(KeyError, match="not stored yet"):
        partial.map(34)
    assert 23 in partial and 34 not in partial
    (part,) = tmp_path.glob("manifest.rank-*.jsonl")
    with open(part, "a") as handle:  # a line cut short by a crash while it was appended
        handle.write('{"shard": 4, "maps": "shard-0000')
    assert MapStore(tmp_path).indices == partial.indices
    (tmp_path / "shard-000004.maps.npy.tmp").write_bytes(b"half a shard")  # what a crash leaves
    resumed = _run("explain", str(tmp_path), str(LENGTH))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(MapStore(tmp_path), reference)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("manifest.rank-*"))


def test_a_second_run_into_a_finished_folder_does_nothing(reference: MapStore) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.path.glob("shard-*")}
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    explain_dataset(cam, loader, reference.path, target="label", shard_batches=SHARD_BATCHES,
                    progress=False)  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in reference.path.glob("shard-*")} == before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"method": "HiResCAM"}, "method"),
        ({"layer": "features.relu1"}, "layers"),
        ({"weights": True}, "weights"),
        ({"length": LENGTH + 1}, "dataset_length"),
        ({"batch_size": 8}, "batch_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"target": None}, "target"),
    ],
)
def test_a_run_with_other_settings_refuses_to_mix(
    reference: MapStore, change: dict[str, Any], named: str
) -> None:
    net = model()
    if change.get("weights"):
        with torch.no_grad():
            net.classifier[1].bias.add_(1.0)
    cam = getattr(camkit, change.get("method", "GradCAM"))(net, change.get("layer", MNIST_LAYER))
    loader = DataLoader(
        Digits(change.get("length", LENGTH)), batch_size=change.get("batch_size", BATCH_SIZE)
    )
    before = sorted(p.name for p in reference.path.iterdir())
    with pytest.raises(CamkitValueError, match=rf"^out: .*another run.*{named}"):
        explain_dataset(
            cam,
            loader,
            reference.path,
            target=change.get("target", "label"),
            dtype=change.get("dtype", "float32"),
            shard_batches=SHARD_BATCHES,
            progress=False,
        )
    assert sorted(p.name for p in reference.path.iterdir()) == before


def test_a_run_whose_explainer_settings_differ_refuses_naming_the_setting(
    tmp_path: Path,
) -> None:
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    options: dict[str, Any] = {"shard_batches": SHARD_BATCHES, "progress": False}
    net = model()
    explain_dataset(camkit.ScoreCAM(net, MNIST_LAYER, top_channels=2), loader, tmp_path, **options)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CamkitValueError, match=r"explainer\.top_channels: 2 there, 3 now"):
        explain_dataset(
            camkit.ScoreCAM(net, MNIST_LAYER, top_channels=3), loader, tmp_path, **options
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_full_disk_ends_in_a_clear_error_and_keeps_what_was_written(
    reference: MapStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []

    def failing_save(handle: Any, array: np.ndarray) -> None:
        if len(saved) == 4:  # the third shard's maps
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(1)
        original_save(handle, array)

    original_save = shards._save_npy
    monkeypatch.setattr(shards, "_save_npy", failing_save)
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    options: dict[str, Any] = {"target": "label", "shard_batches": SHARD_BATCHES, "progress": False}
    with pytest.raises(CamkitStorageError, match=r"disk is full.*readable with") as raised:
        explain_dataset(cam, loader, tmp_path, **options)
    assert isinstance(raised.value.__cause__, OSError)
    partial = MapStore(tmp_path)
    assert partial.indices == list(range(16)) and not partial.complete
    assert torch.equal(partial.map(15), reference.map(15))
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(shards, "_save_npy", original_save)
    explain_dataset(cam, loader, tmp_path, **options)
    _assert_same(MapStore(tmp_path), reference)


def test_an_unwritable_folder_ends_in_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, data: bytes) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    with pytest.raises(CamkitStorageError, match="not writable"):
        explain_dataset(cam, DataLoader(Digits(5), batch_size=4), tmp_path, progress=False)


def test_torchrun_two_processes_write_the_same_maps(reference: MapStore, tmp_path: Path) -> None:
    run = _run("explain", str(tmp_path), str(LENGTH), torchrun=2)
    assert run.returncode == 0, run.stderr
    _assert_same(MapStore(tmp_path), reference)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 5


def test_torchrun_resumes_a_single_process_run(reference: MapStore, tmp_path: Path) -> None:
    killed = _run("explain", str(tmp_path), str(LENGTH), "17")
    assert killed.returncode == -signal.SIGKILL
    assert MapStore(tmp_path).indices in (list(range(8)), list(range(16)))
    run = _run("explain", str(tmp_path), str(LENGTH), torchrun=2)
    assert run.returncode == 0, run.stderr
    _assert_same(MapStore(tmp_path), reference)


def test_evaluate_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "metrics.pt"
    run = _run("evaluate", str(out), str(LENGTH), torchrun=2)
    assert run.returncode == 0, run.stderr
    spread = torch.load(out, weights_only=True)
    single = metrics(LENGTH)
    assert spread.keys() == single.keys()
    for name, result in single.items():
        values, summary, curves = spread[name]
        assert torch.equal(values, result.values) and summary == result.summary
        assert (curves is None and result.curves is None) or torch.equal(curves, result.curves)


def test_ranks_exchange_values_of_any_size_and_exit(tmp_path: Path) -> None:
    """What the ranks tell each other (configurations, results, errors) arrives whole, in
    rank order, whatever each one's size; and the processes end (on torch 2.4, gloo's
    group hung as it was destroyed after all_gather_object, in a third to a half of runs)."""
    out = tmp_path / "exchanged.json"
    run = _run("exchange", str(out), "3", torchrun=2)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text()) == [
        [{"rank": r, "round": i, "bytes": bytes(r * 70_001 + i).hex()} for r in range(2)]
        for i in range(3)
    ]


def test_one_torchrun_script_makes_several_dataset_calls(
    reference: MapStore, tmp_path: Path
) -> None:
    """Two stores and an evaluation in one script under torchrun: the process group camkit
    starts for the first call serves the others (started again, gloo failed to connect)."""
    run = _run("twice", str(tmp_path), str(LENGTH), torchrun=2)
    assert run.returncode == 0, run.stderr
    _assert_same(MapStore(tmp_path / "first"), reference)
    second = MapStore(tmp_path / "second")
    assert second.indices == reference.indices
    layercam = camkit.LayerCAM(model(), MNIST_LAYER)
    x, y = Digits(LENGTH)[:8]
    torch.testing.assert_close(torch.stack([second.map(i) for i in range(8)]), layercam(x, y))
    spread = torch.load(tmp_path / "metrics.pt", weights_only=True)
    for name, result in metrics(LENGTH).items():
        assert torch.equal(spread[name], result.values)


def test_on_batch_sees_every_sample_once_without_a_store() -> None:
    seen: list[int] = []
    net = model()
    before = snapshot(net)

    def on_batch(indices: torch.Tensor, x: torch.Tensor, result: camkit.CAMResult) -> None:
        assert len(indices) == len(x) == len(result.maps)
        seen.extend(indices.tolist())

    loader = DataLoader(Digits(10), batch_size=4, shuffle=True)
    stored = explain_dataset(camkit.GradCAM(net, MNIST_LAYER), loader, None, on_batch=on_batch,
                             progress=False)  # fmt: skip
    assert stored is None and seen == list(range(10))
    assert_untouched(before, snapshot(net))


def test_any_explainer_works(tmp_path: Path) -> None:
    net = model()
    guided = camkit.GuidedGradCAM(net, MNIST_LAYER)
    store = explain_dataset(guided, DataLoader(Digits(5), batch_size=4), tmp_path, progress=False)
    assert store is not None and store.map(4).shape == (1, 28, 28)


class _Columns(torch.utils.data.Dataset[dict[str, Any]]):
    """``Digits`` as a Hugging Face dataset ``with_format("torch")`` gives it: a dict per
    item, so the default collate function makes dict batches; ``names`` renames columns."""

    def __init__(self, n: int, **names: str) -> None:
        self.digits = Digits(n)
        self.input = names.get("input", "pixel_values")
        self.label = names.get("label", "labels")

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, y = self.digits[index]
        return {self.input: x, self.label: y, "id": f"item-{index}"}


@pytest.mark.parametrize(
    ("names", "keys"),
    [
        ({}, {}),  # transformers' names, found without keys
        ({"input": "image", "label": "label"}, {}),  # datasets' names
        ({"input": "img", "label": "y"}, {"input_key": "img", "label_key": "y"}),
    ],
)
def test_dict_batches_give_the_maps_of_tuple_batches(
    reference: MapStore, tmp_path: Path, names: dict[str, str], keys: dict[str, str]
) -> None:
    loader = DataLoader(_Columns(LENGTH, **names), batch_size=BATCH_SIZE)
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    store = explain_dataset(cam, loader, tmp_path, target="label", shard_batches=SHARD_BATCHES,
                            progress=False, **keys)  # fmt: skip
    assert store is not None
    _assert_same(store, reference)


def test_a_dict_batch_run_refuses_to_resume_with_another_input_key(tmp_path: Path) -> None:
    loader = DataLoader(_Columns(6, input="img"), batch_size=4)
    cam = camkit.GradCAM(model(), MNIST_LAYER)
    explain_dataset(cam, loader, tmp_path, input_key="img", progress=False)
    with pytest.raises(CamkitValueError, match=r"input_key: 'img' there, None now"):
        explain_dataset(cam, loader, tmp_path, progress=False)


class _Scaled(torch.nn.Module):
    """The MNIST net, its logits scaled per sample by a keyword input ``scale`` ``(N,)``: a
    model that takes a column of the batch besides the image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, pixel_values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values) * scale[:, None]


class _WithScale(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, n: int) -> None:
        self.columns = _Columns(n)
        self.scale = torch.linspace(-1.0, 2.0, n)  # negative scales flip the scores' signs

    def __len__(self) -> int:
        return len(self.columns)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.columns[index], "scale": self.scale[index]}


def test_forward_keys_pass_dict_columns_to_the_model(tmp_path: Path) -> None:
    data = _WithScale(10)
    loader = DataLoader(data, batch_size=4)
    net = _Scaled().eval()
    cams = {"GradCAM": camkit.GradCAM(net, "net.features.relu"),
            "ScoreCAM": camkit.ScoreCAM(net, "net.features.relu")}  # fmt: skip
    for name, cam in cams.items():
        store = explain_dataset(cam, loader, tmp_path / name, target="label",
                                forward_keys=["scale"], progress=False)  # fmt: skip
        assert store is not None
        for start, batch in zip(range(0, 10, 4), loader, strict=True):
            expected = cam.explain(batch["pixel_values"], batch["labels"],
                                   forward_kwargs={"scale": batch["scale"]})  # fmt: skip
            for row in range(len(expected.maps)):
                assert torch.equal(store.map(start + row), expected.maps[row]), (name, row)
                assert store[start + row].score == pytest.approx(
                    float(expected.scores[row]), rel=1e-6
                )
    with pytest.raises(CamkitValueError, match=r"forward_keys: \['scale'\] there, None now"):
        explain_dataset(cams["GradCAM"], loader, tmp_path / "GradCAM", target="label",
                        progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "loader", "error", "message"),
    [
        ("scale", "dicts", CamkitTypeError, r"^forward_keys: got 'scale'; allowed: a tuple"),
        ([3], "dicts", CamkitTypeError, r"^forward_keys: got \[3\]; allowed: a tuple"),
        (["scales"], "dicts", CamkitValueError,
         r"^forward_keys: \['scales'\] not among the loader's dict batches' keys \['id', "),
        (["pixel_values"], "dicts", CamkitValueError,
         r"^forward_keys: 'pixel_values' is the input_key"),
        (["scale"], "tuples", CamkitValueError,
         r"^forward_keys: names columns of dict batches, and the loader's batches are lists"),
    ],
)  # fmt: skip
def test_forward_keys_that_cannot_be_passed_are_refused(
    tmp_path: Path, keys: Any, loader: str, error: type[Exception], message: str
) -> None:
    data = _WithScale(6) if loader == "dicts" else Digits(6)
    options = {"input_key": "pixel_values"} if keys == ["pixel_values"] else {}
    with pytest.raises(error, match=message):
        explain_dataset(camkit.GradCAM(_Scaled().eval(), "net.features.relu"),
                        DataLoader(data, batch_size=4), tmp_path, forward_keys=keys,
                        progress=False, **options)  # fmt: skip


def test_evaluate_and_compare_read_dict_batches_as_tuple_batches() -> None:
    net = model()
    cam = camkit.GradCAM(net, MNIST_LAYER)
    metrics = {"drop": camkit.metrics.average_drop}
    tuples = DataLoader(Digits(10), batch_size=4)
    columns = DataLoader(_Columns(10, input="img"), batch_size=4)
    for target in ("predicted", "label"):
        expected = camkit.metrics.evaluate(net, cam, tuples, metrics, target=target,
                                           progress=False)["drop"].values  # fmt: skip
        got = camkit.metrics.evaluate(net, cam, columns, metrics, target=target, progress=False,
                                      input_key="img")["drop"].values  # fmt: skip
        assert torch.equal(got, expected)
    compared = []
    for loader, keys in ((tuples, {}), (columns, {"input_key": "img"})):
        compared.append(camkit.metrics.compare(net, loader, {"Grad-CAM": cam}, metrics,
                                               target="label", resamples=50, progress=False,
                                               **keys))  # fmt: skip
    assert compared[0].table() == compared[1].table()


class _Rows(torch.utils.data.Dataset[Any]):
    def __init__(self, row: Any) -> None:
        self.row = row

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> Any:
        return self.row


_IMAGE = torch.zeros(1, 28, 28)


@pytest.mark.parametrize(
    ("row", "options", "error", "message"),
    [
        ({"pixels": _IMAGE}, {}, CamkitValueError,
         r"^input_key: the loader's dict batches have the keys \['pixels'\] and none of "
         r"\['pixel_values', 'image', 'images'\]; give input_key="),
        ({"image": _IMAGE, "pixel_values": _IMAGE}, {}, CamkitValueError,
         r"^input_key: the loader's dict batches have both 'pixel_values' and 'image'"),
        ({"image": _IMAGE}, {"input_key": "pixels"}, CamkitValueError,
         r"^input_key: got 'pixels'; the loader's dict batches have the keys \['image'\]"),
        ({"image": "a.png"}, {}, CamkitTypeError,
         r"^input_key: the batches' 'image' is a list; camkit needs a tensor"),
        ({"image": _IMAGE}, {"target": "label"}, CamkitValueError,
         r"^target: 'label' needs labels, and the loader's batches \(dict\) have none"),
        ({"image": _IMAGE, "label": 1, "labels": 1}, {"target": "label"}, CamkitValueError,
         r"^label_key: the loader's dict batches have both 'labels' and 'label'"),
        ({"image": _IMAGE, "label": 1}, {"target": "label", "label_key": "y"}, CamkitValueError,
         r"^label_key: got 'y'; the loader's dict batches have the keys \['image', 'label'\]"),
        ((_IMAGE,), {"target": "label"}, CamkitValueError,
         r"^target: 'label' needs labels, and the loader's batches \(list\) have none"),
        ("a.png", {}, CamkitTypeError, r"^loader: yielded a list; camkit needs batches"),
        (_IMAGE, {"input_key": 3}, CamkitTypeError, r"^input_key: got 3; allowed: the name"),
        (_IMAGE, {"input_key": "image"}, CamkitValueError,
         r"^input_key: names columns of dict batches, and the loader's batches are Tensors"),
        ((_IMAGE, 1), {"label_key": "y"}, CamkitValueError,
         r"^label_key: names columns of dict batches, and the loader's batches are lists"),
        (_IMAGE, {"label_key": ""}, CamkitTypeError, r"^label_key: got ''; allowed: the name"),
    ],
)  # fmt: skip
def test_batches_camkit_cannot_read_get_clear_errors(
    tmp_path: Path, row: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    net = model()
    before = snapshot(net)
    loader = DataLoader(_Rows(row), batch_size=4)
    with pytest.raises(error, match=message):
        explain_dataset(camkit.GradCAM(net, MNIST_LAYER), loader, tmp_path, progress=False,
                        **options)  # fmt: skip
    assert_untouched(before, snapshot(net))
    # evaluate (and so compare) reads batches the same way, and refuses these alike
    with pytest.raises(error, match=message):
        camkit.metrics.evaluate(net, camkit.GradCAM(net, MNIST_LAYER), loader,
                                {"drop": camkit.metrics.average_drop}, progress=False,
                                **options)  # fmt: skip
    assert_untouched(before, snapshot(net))


class _Stream(IterableDataset[torch.Tensor]):
    def __iter__(self) -> Any:
        return iter([torch.zeros(1, 28, 28)])


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"loader": [torch.zeros(2, 1, 28, 28)]}, CamkitTypeError, "^loader: expected a torch"),
        ({"loader": DataLoader(_Stream(), batch_size=1)}, CamkitValueError, "iterable-style"),
        ({"loader": DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28)), batch_size=1)},
         CamkitValueError, "empty"),
        ({"loader": DataLoader(Digits(5), batch_size=None)}, CamkitValueError,
         r"^loader: has batch_size=None; give a DataLoader with batch_size="),
        ({"loader": DataLoader(Digits(5), batch_sampler=[[0, 1], [2, 3, 4]])}, CamkitValueError,
         r"^loader: has a custom batch_sampler; give a DataLoader with batch_size="),
        ({"dtype": "int8"}, CamkitValueError, "^dtype: got 'int8'"),
        ({"shard_batches": 0}, CamkitValueError, "^shard_batches: got 0"),
        ({"target": "labels"}, CamkitValueError, "^target: got 'labels'"),
        ({"target": 2.5}, CamkitTypeError, "^target: got float"),
        ({"target": lambda batch: torch.zeros(4, 2, dtype=torch.long)}, CamkitValueError,
         "one target per sample"),
        ({"explainer": "GradCAM"}, CamkitTypeError, "^explainer: expected a camkit"),
        ({"out": ""}, CamkitTypeError, r"^out: got ''; allowed: a folder's path"),
        ({"out": 3}, CamkitTypeError, r"^out: got 3; allowed: a folder's path"),
        ({"out": ROOT / "README.md"}, CamkitValueError, r"^out: '.*README.md' is a file; give a"),
    ],
)  # fmt: skip
def test_bad_arguments_get_clear_errors(
    tmp_path: Path, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    net = model()
    before = snapshot(net)
    call: dict[str, Any] = {
        "explainer": camkit.GradCAM(net, MNIST_LAYER),
        "loader": DataLoader(Digits(5), batch_size=4),
        "out": tmp_path,
        "progress": False,
        **arguments,
    }
    with pytest.raises(error, match=message):
        explain_dataset(call.pop("explainer"), call.pop("loader"), call.pop("out"), **call)
    assert_untouched(before, snapshot(net))


def test_a_folder_without_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CamkitValueError, match="holds no camkit map store"):
        MapStore(tmp_path)


def test_a_store_refuses_arguments_of_the_wrong_kind(tmp_path: Path) -> None:
    loader = DataLoader(Digits(6), batch_size=4)
    store = explain_dataset(camkit.GradCAM(model(), MNIST_LAYER), loader, tmp_path,
                            shard_batches=1, progress=False)  # fmt: skip
    assert store is not None
    with pytest.raises(CamkitTypeError, match=r"^path: got int; allowed: the store's folder"):
        MapStore(123)  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match=r"^checksums: got 'no'; allowed: True or False"):
        MapStore(tmp_path, checksums="no")  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match=r"^indices: got int; allowed: a list"):
        store.digest(5)  # type: ignore[arg-type]
    with pytest.raises(CamkitTypeError, match=r"^indices: expected ints, got float"):
        store.digest([1.5])  # type: ignore[list-item]
    assert store.digest(torch.tensor([1, 5])) == store.digest([1, 5])  # type: ignore[arg-type]
    assert store.digest([1]) != store.digest([5])  # samples of two shards


def test_pseudo_masks() -> None:
    maps = torch.tensor([[[0.0, 0.2], [0.5, 1.0]], [[0.9, 0.1], [0.4, 0.6]]])
    masks = pseudo_masks(maps, torch.tensor([3, 0]), threshold=0.5, background_below=0.2)
    assert masks.tolist() == [[[0, 255], [4, 4]], [[1, 0], [255, 1]]]
    plain = pseudo_masks(maps, torch.tensor([3, 0]), threshold=0.5)
    assert plain.tolist() == [[[0, 0], [4, 4]], [[1, 0], [0, 1]]]
    with pytest.raises(CamkitValueError, match=r"^threshold: "):
        pseudo_masks(maps, torch.tensor([3, 0]), threshold=0.2, background_below=0.5)
    with pytest.raises(CamkitValueError, match=r"^classes: "):
        pseudo_masks(maps, torch.tensor([3]))
