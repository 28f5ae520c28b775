"""Fault injection for the map store: every fault ends in correct data or a clear error.

    python tests/store_faults.py OUT.json [--rst docs/datasets/faults.rst]

Runs in its own process (one CPU thread, so that ``os.fork`` is safe), against a
clean run's store (37 samples, 5 shards of 2 batches of 4):

- **kills**: a run is killed (``SIGKILL``, in a forked child) at every write
  step in turn: before each write of file bytes (and half-way through it),
  each ``fsync``, each rename. The store left behind is read, then the same
  run is repeated into it.
- **damage**: every kind of file (the manifest, a shard's maps and records,
  the sources, a rank's part of the manifest, the lock file) is truncated,
  emptied, deleted, bit-flipped (in its header, middle and end), swapped with
  another of its kind, or given trailing garbage; the store is read, then the
  run is repeated into it (and, when camkit names a repair, the repair is made
  and the run repeated).
- **races**: two runs into one folder start together (forked children), with
  the same settings and with different layers.

Every outcome is one of: ``equal`` (the data read equal, bit for bit, to the
clean run's, possibly a subset of it for an interrupted store), ``refused``
(a :class:`~camkit.errors.CamkitError` with a message), or ``WRONG`` (any other
exception, or data that differs). The counts go to OUT.json; the test asserts
that ``WRONG`` never occurs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import camkit  # noqa: E402
from camkit._store import files as store_files  # noqa: E402
from camkit.errors import CamkitError  # noqa: E402
from tests.dist_worker import BATCH_SIZE, SHARD_BATCHES, Digits, model  # noqa: E402

LENGTH = 37
SOURCES = [f"digits/{i:03d}.png" for i in range(LENGTH)]
Reference = dict[str, Any]


def run(out: Path, layer: str = "features.relu") -> camkit.MapStore | None:
    """The run every trial repeats (its explainer's layer is the one thing races vary)."""
    cam = camkit.GradCAM(model(), layer)
    loader = DataLoader(Digits(LENGTH), batch_size=BATCH_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "damaged shards computed again"
        return camkit.explain_dataset(
            cam, loader, out, target="label", shard_batches=SHARD_BATCHES, progress=False,
            sources=SOURCES,
        )  # fmt: skip


def contents(store: camkit.MapStore) -> Reference:
    """Everything a store returns: per index its record, map bytes and source."""
    found: Reference = {}
    for index in store.indices:
        record = store[index]
        found[str(index)] = (
            record.index, record.target, record.score, record.prediction, record.source,
            record.map.numpy().tobytes(),
        )  # fmt: skip
    return found


def read_outcome(folder: Path, reference: Reference) -> str:
    """What reading ``folder`` gives: ``equal`` (every record returned is the reference's,
    bit for bit), ``refused`` (a camkit error), or ``WRONG``."""
    try:
        store = camkit.MapStore(folder)
        found = contents(store)
        store.records()
    except CamkitError as error:
        return _refused(error)
    except Exception:  # anything else is a failure of camkit's promise
        return "WRONG: " + traceback.format_exc(limit=3)
    if any(found[k] != reference[k] for k in found) or not set(found) <= set(reference):
        return "WRONG: other data"
    if store.complete and set(found) != set(reference):
        return "WRONG: complete but samples missing"
    return "equal"


def _refused(error: CamkitError) -> str:
    message = str(error)
    return "refused" if len(message) > 40 else f"WRONG: unclear error {message!r}"


def rerun_outcome(folder: Path, reference: Reference) -> str:
    """What repeating the run into ``folder`` gives; when camkit names a repair (delete the
    manifest), it is made and the run repeated. ``equal`` needs a complete store."""
    for attempt in range(2):
        try:
            store = run(folder)
        except CamkitError as error:
            if attempt == 0 and "To repair: delete" in str(error):
                (folder / "manifest.json").unlink()
                continue
            return _refused(error)
        except Exception:
            return "WRONG: " + traceback.format_exc(limit=3)
        assert store is not None
        outcome = read_outcome(folder, reference)
        if outcome == "equal" and not (store.complete and len(store) == LENGTH):
            return "WRONG: rerun left the store incomplete"
        return f"{outcome} after the repair the error named" if attempt else outcome
    return "WRONG: unreachable"


# ----------------------------------------------------------------------------- kills


class Killer:
    """Counts write steps and kills the process (``SIGKILL``) at step ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.steps = at, 0

    def step(self, half: Callable[[], None] | None = None) -> None:
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        if half is not None:  # the next step: half the bytes written, then the kill
            self.steps += 1
            if self.steps == self.at:
                half()
                os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def killing(killer: Killer) -> Iterator[None]:
    """Every write of file bytes, fsync and rename camkit's store makes is a step."""
    write, fsync, replace = store_files.HashingWriter.write, os.fsync, os.replace

    def counted_write(self: store_files.HashingWriter, data: Any) -> int:
        view = memoryview(data).cast("B")

        def half() -> None:
            self._handle.write(view[: len(view) // 2])
            self._handle.flush()

        killer.step(half)
        return write(self, data)

    def counted_fsync(descriptor: int) -> None:
        killer.step()
        fsync(descriptor)

    def counted_replace(source: Any, target: Any) -> None:
        killer.step()
        replace(source, target)

    store_files.HashingWriter.write = counted_write  # type: ignore[method-assign]
    os.fsync, os.replace = counted_fsync, counted_replace
    try:
        yield
    finally:
        store_files.HashingWriter.write = write  # type: ignore[method-assign]
        os.fsync, os.replace = fsync, replace


def in_child(work: Callable[[], int]) -> int:
    """Run ``work()`` in a forked child; its exit status, or minus the signal that ended it."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns
        code = 1
        try:
            code = work()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def kill_trials(scratch: Path, reference: Reference) -> tuple[Counter[str], Path | None]:
    """Kill a run at every write step; return the outcomes and an interrupted store that
    has a rank's part of the manifest (for the damage trials)."""
    counting = Killer(at=0)
    with killing(counting):
        run(scratch / "count")
    outcomes: Counter[str] = Counter()
    interrupted = None
    for at in range(1, counting.steps + 1):
        folder = scratch / f"kill-{at}"

        def killed_run(at: int = at, folder: Path = folder) -> int:
            with killing(Killer(at)):
                run(folder)
            return 0

        status = in_child(killed_run)
        if status != -signal.SIGKILL:
            outcomes[f"WRONG: the run was not killed (status {status})"] += 1
            continue
        after_kill = (
            read_outcome(folder, reference)
            if (folder / "manifest.json").exists()
            else "no store yet"  # killed before the manifest was first written
        )
        outcomes[f"read after the kill: {after_kill}"] += 1
        if interrupted is None and list(folder.glob("manifest.rank-*.jsonl")):
            interrupted = scratch / "interrupted"
            shutil.copytree(folder, interrupted)
        outcomes[f"rerun: {rerun_outcome(folder, reference)}"] += 1
        shutil.rmtree(folder)
    outcomes["trials"] = counting.steps
    return outcomes, interrupted


# ----------------------------------------------------------------------------- damage


def _flip(position: Callable[[int], int]) -> Callable[[Path, Path], None]:
    def flip(path: Path, folder: Path) -> None:
        data = bytearray(path.read_bytes())
        if data:
            data[position(len(data))] ^= 0x10
        path.write_bytes(bytes(data))

    return flip


def _swap(path: Path, folder: Path) -> None:
    kind = ".maps.npy" if path.name.endswith(".maps.npy") else ".records.npy"
    other = folder / f"shard-000001{kind}"
    held = path.read_bytes()
    path.write_bytes(other.read_bytes())
    other.write_bytes(held)


FAULTS: dict[str, Callable[[Path, Path], None]] = {
    "truncated to half": lambda p, f: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p, f: p.write_bytes(b""),
    "deleted": lambda p, f: p.unlink(),
    "bit flipped at the start": _flip(lambda n: min(3, n - 1)),
    "bit flipped in the middle": _flip(lambda n: n // 2),
    "bit flipped at the end": _flip(lambda n: n - 2 if n > 1 else 0),
    "garbage appended": lambda p, f: p.write_bytes(p.read_bytes() + b"\x00garbage"),
}


def damage_trials(clean: Path, interrupted: Path | None, scratch: Path, reference: Reference
                  ) -> Counter[str]:  # fmt: skip
    """Damage every kind of file in every way; read, then rerun."""
    targets = {
        "manifest.json": clean,
        "shard-000000.maps.npy": clean,
        "shard-000000.records.npy": clean,
        "sources.json": clean,
        "writer.lock": clean,
    }
    if interrupted is not None:
        targets[next(interrupted.glob("manifest.rank-*.jsonl")).name] = interrupted
    outcomes: Counter[str] = Counter()
    for name, source in targets.items():
        faults = dict(FAULTS)
        if name.startswith("shard-"):
            faults["swapped with shard 1's"] = _swap
        for apply in faults.values():
            folder = scratch / "damaged"
            shutil.copytree(source, folder)
            apply(folder / name, folder)
            read = read_outcome(folder, reference)
            outcomes[f"read: {read}"] += 1
            outcomes[f"rerun: {rerun_outcome(folder, reference)}"] += 1
            outcomes["trials"] += 1
            shutil.rmtree(folder)
    return outcomes


# ----------------------------------------------------------------------------- races


def race_trials(scratch: Path, references: dict[str, Reference], rounds: int) -> Counter[str]:
    """Two runs into one folder, started together: with the same layer, and with two."""
    outcomes: Counter[str] = Counter()
    for layers in (("features.relu", "features.relu"), ("features.relu", "features.conv2")):
        for trial in range(rounds):
            folder = scratch / f"race-{trial}"
            ready, go = os.pipe()
            pids = []
            for layer in layers:
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(go)
                    os.read(ready, 1)  # both start when the parent closes the pipe
                    os._exit(_racer(folder, layer, references[layer]))
                pids.append(pid)
            os.close(ready)
            os.close(go)
            statuses = [os.WEXITSTATUS(os.waitpid(pid, 0)[1]) for pid in pids]
            kind = "same settings" if layers[0] == layers[1] else "different layers"
            for status in statuses:
                outcomes[f"{kind}: a run {RACER[status]}"] += 1
            final = _final_outcome(folder, references)
            outcomes[f"{kind}: the folder read afterwards: {final}"] += 1
            outcomes["trials"] += 1
            shutil.rmtree(folder)
    return outcomes


def _final_outcome(folder: Path, references: dict[str, Reference]) -> str:
    """Reading the folder after a race, against the reference of the run it records."""
    try:
        layer = camkit.MapStore(folder).config["explainer"]["layers"][0]
    except CamkitError as error:
        return _refused(error)
    return read_outcome(folder, references[layer])


RACER = {0: "equal", 3: "refused", 4: "WRONG: returned other data", 5: "WRONG: crashed"}


def _racer(folder: Path, layer: str, reference: Reference) -> int:
    try:
        store = run(folder, layer)
        assert store is not None
        return 0 if contents(store) == reference else 4
    except CamkitError as error:
        return 3 if len(str(error)) > 40 else 5
    except BaseException:
        return 5


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--races", type=int, default=10, help="trials per kind of race")
    args = parser.parse_args()
    torch.set_num_threads(1)  # no OpenMP pool: forking is safe
    scratch = Path(tempfile.mkdtemp(prefix="camkit-faults-"))
    try:
        references = {}
        for layer in ("features.relu", "features.conv2"):
            store = run(scratch / f"clean-{layer}", layer)
            assert store is not None and store.complete
            references[layer] = contents(store)
        clean = scratch / "clean-features.relu"
        kills, interrupted = kill_trials(scratch, references["features.relu"])
        damage = damage_trials(clean, interrupted, scratch, references["features.relu"])
        races = race_trials(scratch, references, args.races)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"kills": kills, "damage": damage, "races": races}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
