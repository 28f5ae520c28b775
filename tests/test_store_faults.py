"""The map store under faults: kills, damaged files, two writers, changed options.

Each fault must end in data bitwise equal to a clean run's, or in a clear camkit
error; silently wrong data is the one unacceptable outcome. The trials of
``tests/store_faults.py`` run in their own process (it forks); their counts
are printed at the end of the test run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import camkit
from camkit._store.lock import WriterLock
from camkit.datasets import MapStore, explain_dataset
from camkit.errors import CamkitStorageError, CamkitValueError
from tests.conftest import FAULT_COUNTS
from tests.dist_worker import BATCH_SIZE, SHARD_BATCHES, Digits, model
from tests.helpers import MNIST_LAYER

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 37


def test_every_fault_ends_in_correct_data_or_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "tests" / "store_faults.py"), str(out)]
    run = subprocess.run(
        [*command, "--races", "10"], capture_output=True, text=True, cwd=ROOT, env=environment
    )
    assert run.returncode == 0, run.stderr[-3000:]
    counts: dict[str, dict[str, int]] = json.loads(out.read_text())
    for group, outcomes in counts.items():
        FAULT_COUNTS[group] = outcomes
        wrong = {k: v for k, v in outcomes.items() if "WRONG" in k}
        assert not wrong, (group, wrong)
    kills, damage, races = counts["kills"], counts["damage"], counts["races"]
    # a clean run has dozens of write steps (5 shards: bytes, fsyncs, renames, part lines)
    assert kills["trials"] >= 40
    assert kills["rerun: equal"] == kills["trials"]  # every killed run resumes to the clean maps
    # 6 kinds of file x 7 faults, and swaps of the two shard files
    assert damage["trials"] == 6 * 7 + 2
    repaired = damage.get("rerun: equal after the repair the error named", 0)
    assert damage["rerun: equal"] + repaired == damage["trials"]
    assert repaired >= 3  # the manifest's damage is named, with its repair
    assert damage["read: refused"] >= 20  # damaged shards are refused, not returned
    for kind in ("same settings", "different layers"):
        assert races[f"{kind}: the folder read afterwards: equal"] == 10
        assert races.get(f"{kind}: a run equal", 0) >= 10  # at least one run of each pair
    assert races["trials"] == 20


# ----------------------------------------------------------------------------- one writer


def _run(out: Path, cam: camkit.Explainer | None = None, data: Any = None, **options: Any
         ) -> MapStore | None:  # fmt: skip
    loader = DataLoader(data if data is not None else Digits(LENGTH), batch_size=BATCH_SIZE)
    options = {"target": "label", "shard_batches": SHARD_BATCHES, "progress": False, **options}
    return explain_dataset(cam or camkit.GradCAM(model(), MNIST_LAYER), loader, out, **options)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    with WriterLock(tmp_path), pytest.raises(CamkitStorageError) as info:
        _run(tmp_path)
    message = str(info.value)
    assert "is being written by another run" in message and str(tmp_path) in message
    assert f"process {os.getpid()}" in message  # the holder, from the lock file
    assert not (tmp_path / "manifest.json").exists()  # refused before anything was written
    store = _run(tmp_path)  # the lock went with its holder
    assert store is not None and store.complete


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib; sys.path.insert(0, sys.argv[3]);"
        "from camkit._store.lock import WriterLock;"
        "lock = WriterLock(pathlib.Path(sys.argv[1])).__enter__();"
        "pathlib.Path(sys.argv[2]).write_text('held'); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(ready), str(ROOT)])
    try:
        for _ in range(600):
            if ready.exists() or holder.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists()
        with pytest.raises(CamkitStorageError, match=f"process {holder.pid} on "):
            _run(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    store = _run(tmp_path)
    assert store is not None and store.complete and len(store) == LENGTH


# ----------------------------------------------------------------------------- the resume key


class Reordered(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self) -> None:
        self.digits = Digits(LENGTH)

    def __len__(self) -> int:
        return LENGTH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.digits[LENGTH - 1 - index]


class Jittered(Digits):
    """Digits with a random brightness shift: other items (and maps) on every read."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(index)
        return x + torch.rand(()), y


def _other_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    return TensorDataset(
        torch.randn(LENGTH, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (LENGTH,), generator=generator),
    )


def _other_weights() -> camkit.Explainer:
    net = model()
    with torch.no_grad():
        net.classifier[1].bias.add_(1e-3)
    return camkit.GradCAM(net, MNIST_LAYER)


CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "method": ({"cam": camkit.GradCAMPlusPlus(model(), MNIST_LAYER)}, "explainer.method"),
    "layer": ({"cam": camkit.GradCAM(model(), "features.conv2")}, "explainer.layers"),
    "weights": ({"cam": _other_weights()}, "weights"),
    "other data, same length": ({"data": _other_data()}, "dataset.sha256"),
    "the same data reordered": ({"data": Reordered()}, "dataset.sha256"),
    "random transforms": ({"data": Jittered(LENGTH)}, "random transforms"),
    "target": ({"target": 3}, "target"),
    "dtype": ({"dtype": "uint8"}, "dtype"),
    "resolution": ({"upsample": False}, "upsample"),
    "shard size": ({"shard_batches": 3}, "shard_batches"),
    "sources": ({"sources": [f"x{i}" for i in range(LENGTH)]}, "sources"),
    "dataset options": ({"dataset_options": {"size": [32, 32]}}, "dataset_options"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    _run(folder)
    return folder


@pytest.mark.parametrize("state", ["finished", "interrupted"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_that_decides_the_maps_is_refused(
    change: str, state: str, finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    if state == "interrupted":  # the last two shards lost, as a killed run leaves it
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["complete"] = False
        for shard in ("3", "4"):
            del manifest["shards"][shard]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "writer.lock"}
    options, named = CHANGES[change]
    with pytest.raises(CamkitValueError, match="holds maps of another run") as info:
        _run(folder, **options)
    assert named in str(info.value)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "writer.lock"}
    assert after == before  # refused before anything was written
    FAULT_COUNTS.setdefault("changed options", {"trials": 0})
    FAULT_COUNTS["changed options"]["trials"] += 1
    counts = FAULT_COUNTS["changed options"]
    counts["refused, naming the difference"] = counts.get("refused, naming the difference", 0) + 1


PAIRS = {
    "fuse": (
        lambda: camkit.GradCAM(model(), [MNIST_LAYER, "features.conv2"]),
        lambda: camkit.GradCAM(model(), [MNIST_LAYER, "features.conv2"], fuse="product"),
        "explainer.fuse: 'mean' there, 'product' now",
    ),
    "tanh_scale": (
        lambda: camkit.LayerCAM(model(), MNIST_LAYER, tanh_scale=2.0),
        lambda: camkit.LayerCAM(model(), MNIST_LAYER),
        "explainer.tanh_scale: 2.0 there, None now",
    ),
    "top_channels": (
        lambda: camkit.ScoreCAM(model(), MNIST_LAYER, top_channels=2),
        lambda: camkit.ScoreCAM(model(), MNIST_LAYER, top_channels=3),
        "explainer.top_channels: 2 there, 3 now",
    ),
}


@pytest.mark.parametrize("option", list(PAIRS))
def test_an_explainer_option_alone_is_refused(option: str, tmp_path: Path) -> None:
    first, second, named = PAIRS[option]
    data = Digits(12)
    assert _run(tmp_path, cam=first(), data=data) is not None
    with pytest.raises(CamkitValueError, match="holds maps of another run") as info:
        _run(tmp_path, cam=second(), data=data)
    assert named in str(info.value)
    counts = FAULT_COUNTS.setdefault("changed options", {"trials": 0})
    counts["trials"] += 1
    counts["refused, naming the difference"] = counts.get("refused, naming the difference", 0) + 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files from /proc")
def test_every_rename_is_flushed_with_its_folder_before_the_shard_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(descriptor: int) -> None:
        folder = stat.S_ISDIR(os.fstat(descriptor).st_mode)
        name = Path(os.readlink(f"/proc/self/fd/{descriptor}")).name
        events.append("fsync folder" if folder else f"fsync {name}")
        fsync(descriptor)

    def recorded_replace(source: Any, target: Any) -> None:
        events.append(f"rename {Path(target).name}")
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    _run(tmp_path, data=Digits(24))  # 3 shards of 2 batches
    renames = [i for i, e in enumerate(events) if e.startswith("rename")]
    assert len(renames) == 2 * 3 + 2  # each shard's 2 files, the manifest when begun and ended
    for i in renames:
        name = events[i].removeprefix("rename ")
        assert events[i - 1] == f"fsync {name}.tmp"  # the bytes on disk before the rename
        later = events[i + 1 :]
        assert "fsync folder" in later  # the rename on disk, and before the shard is recorded:
        recorded = [j for j, e in enumerate(later) if e == "fsync manifest.rank-00000.jsonl"]
        assert not recorded or later.index("fsync folder") < recorded[0]
    assert events[-1] == "fsync folder"


def test_the_dataset_fingerprint_reads_sampled_items_only() -> None:
    from camkit._store.fingerprints import SAMPLED, sampled_positions

    for length in (1, 2, 5, 16, 17, 1000):
        positions = sampled_positions(length)
        assert positions == sorted(set(positions)) and positions == sampled_positions(length)
        assert positions[0] == 0 and positions[-1] == length - 1
        assert len(positions) == min(SAMPLED, length)


# ----------------------------------------------------------------------------- integrity


def _damage(path: Path, how: Callable[[bytes], bytes]) -> None:
    path.write_bytes(how(path.read_bytes()))


def test_verify_reports_every_damaged_shard_and_a_rerun_repairs_them(
    finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    assert MapStore(folder).verify().ok
    _damage(folder / "shard-000001.maps.npy", lambda b: b[: len(b) // 2])
    flipped = bytearray((folder / "shard-000003.records.npy").read_bytes())
    flipped[-5] ^= 1
    (folder / "shard-000003.records.npy").write_bytes(bytes(flipped))
    (folder / "shard-000004.maps.npy").unlink()
    check = MapStore(folder).verify()
    assert not check.ok and sorted(check.damaged) == [1, 3, 4] and check.checked == 5
    assert "bytes" in check.damaged[1] and "checksum" in check.damaged[3]
    assert "missing" in check.damaged[4]
    store = MapStore(folder)
    assert store[0].index == 0  # intact shards stay readable
    with pytest.raises(CamkitStorageError, match=r"shard 1 of the store .* is damaged"):
        store[9]
    with pytest.warns(RuntimeWarning, match=r"3 damaged shard\(s\)"):
        repaired = _run(folder)
    assert repaired is not None and repaired.verify().ok and repaired.complete
    reference = MapStore(finished)
    for index in reference.indices:
        assert torch.equal(repaired.map(index), reference.map(index))
        ours, theirs = repaired[index], reference[index]
        assert (ours.index, ours.target, ours.score, ours.prediction) == (
            theirs.index, theirs.target, theirs.score, theirs.prediction
        )  # fmt: skip


def test_without_checksums_swapped_records_are_still_caught_by_their_indices(
    finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    first, second = folder / "shard-000000.records.npy", folder / "shard-000001.records.npy"
    held = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(held)
    store = MapStore(folder, checksums=False)
    with pytest.raises(CamkitStorageError, match="the samples of another shard"):
        store[0]
    assert "fails its CRC-32" in MapStore(folder).verify().damaged[0]


def test_a_damaged_manifest_is_named_with_its_repair(finished: Path, tmp_path: Path) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text() + "}")
    for attempt in (lambda: MapStore(folder), lambda: _run(folder)):
        with pytest.raises(CamkitStorageError) as info:
            attempt()
        assert str(manifest) in str(info.value) and "is damaged" in str(info.value)
        assert f"To repair: delete {str(manifest)!r}" in str(info.value)
    manifest.unlink()  # the repair the message names
    store = _run(folder)
    assert store is not None and store.verify().ok
    assert all(torch.equal(store.map(i), MapStore(finished).map(i)) for i in range(LENGTH))


def test_stale_parts_of_a_store_whose_manifest_was_deleted_are_not_merged(
    finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = {"shard": 0, **manifest["shards"]["0"]}
    (folder / "manifest.rank-00000.jsonl").write_text(json.dumps(entry) + "\n")
    (folder / "manifest.json").unlink()
    store = _run(folder, cam=camkit.GradCAM(model(), "features.conv2"))  # another run's maps
    assert store is not None and store.verify().ok
    fresh = _run(tmp_path / "fresh", cam=camkit.GradCAM(model(), "features.conv2"))
    assert fresh is not None
    assert all(torch.equal(store.map(i), fresh.map(i)) for i in range(LENGTH))


def test_sources_are_stored_and_checked(tmp_path: Path) -> None:
    sources = [f"digits/{i:03d}.png" for i in range(LENGTH)]
    store = _run(tmp_path, sources=sources)
    assert store is not None and store.sources == sources
    assert [store[i].source for i in (0, 36)] == [sources[0], sources[36]]
    _damage(tmp_path / "sources.json", lambda b: b.replace(b"001", b"002"))
    damaged = MapStore(tmp_path)
    with pytest.raises(CamkitStorageError, match=r"sources\.json' is missing or damaged"):
        damaged[0]
    assert not damaged.verify().ok
    again = _run(tmp_path, sources=sources)  # writes it again
    assert again is not None and again.verify().ok and again[1].source == sources[1]


def test_a_checksum_covers_the_file_as_written(finished: Path) -> None:
    import zlib

    manifest = json.loads((finished / "manifest.json").read_text())
    for entry in manifest["shards"].values():
        for kind in ("maps", "records"):
            data = (finished / entry[kind]).read_bytes()
            assert f"{zlib.crc32(data):08x}" == entry[f"{kind}_crc32"]
            assert len(data) == entry[f"{kind}_bytes"]
            assert np.load(finished / entry[kind]).shape[0] == entry["count"]


def test_shard_files_are_what_numpy_save_writes() -> None:
    import io

    from camkit._store.files import HashingWriter
    from camkit._store.shards import RECORD, _save_npy

    generator = np.random.default_rng(0)
    for array in (
        generator.random((5, 28, 28)).astype(np.float32),
        generator.random((3, 7, 7)).astype(np.float16),
        (generator.random((4, 9)) * 255).astype(np.uint8),
        np.zeros(6, RECORD),
        np.zeros((0, 4, 4), np.float32),
        generator.random((8, 6, 6)).astype(np.float32)[::2],  # not contiguous
    ):
        expected, written = io.BytesIO(), io.BytesIO()
        np.save(expected, array)
        hashing = HashingWriter(written)
        _save_npy(hashing, array)
        assert written.getvalue() == expected.getvalue()
        assert hashing.size == len(expected.getvalue())


def test_a_store_of_the_first_format_is_named_as_such(finished: Path, tmp_path: Path) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["version"] = 1
    for entry in manifest["shards"].values():  # format 1 had no sizes or checksums
        for kind in ("maps", "records"):
            del entry[f"{kind}_bytes"], entry[f"{kind}_crc32"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for attempt in (lambda: MapStore(folder), lambda: _run(folder)):
        with pytest.raises(CamkitStorageError, match="of format version 1; this camkit reads"):
            attempt()


def test_a_digest_follows_the_bytes_of_the_shards_that_hold_the_samples(
    finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    shutil.copytree(finished, folder)
    store = MapStore(folder)
    first, last = store.digest(range(0, 8)), store.digest(range(32, 37))
    assert first != last and first == MapStore(finished).digest([0, 7, 3])
    (folder / "shard-000000.maps.npy").unlink()  # shard 0 (samples 0 to 7) lost...
    with pytest.warns(RuntimeWarning, match="computed again"):
        _run(folder)  # ...and written again: the same bytes, the same digest
    assert MapStore(folder).digest(range(0, 8)) == first
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"]["4"]["maps_crc32"] = "00000000"  # as if shard 4 held other bytes
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert MapStore(folder).digest(range(32, 37)) != last
    assert MapStore(folder).digest(range(0, 8)) == first
    with pytest.raises(KeyError, match="not stored"):
        MapStore(folder).digest([LENGTH + 100])
