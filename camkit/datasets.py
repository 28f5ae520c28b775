"""Maps for a whole dataset: written to disk in shards, resumable, on one process or many.

:func:`explain_dataset` explains every sample of a
:class:`~torch.utils.data.DataLoader` with any camkit explainer and writes,
per sample, the map, the explained class, its score, the model's prediction
and the sample's index in the dataset; :class:`MapStore` reads them back, one
sample at a time if need be.

**The format: NumPy ``.npy`` files and a JSON manifest.** A folder holds
``manifest.json`` and, per shard (a run of consecutive batches),
``shard-000000.maps.npy`` (the maps, ``(n, *map shape)``, float32, float16
or uint8) and ``shard-000000.records.npy`` (a structured array: ``index``,
``target``, ``score``, ``prediction``). ``.npy`` is NumPy's own format,
specified and stable since 2008, readable without camkit (``numpy.load``) by
any tool in the field, and it memory-maps: reading one sample's map reads
that map's bytes only, without loading the rest. It needs nothing beyond
NumPy, which camkit already depends on (safetensors would have been a new
dependency with no gain for plain arrays; zarr a heavy one, for chunking and
compression that maps of a few kilobytes each do not need).

**Nothing lost, nothing twice, nothing wrong.** Each file is written under a
temporary name, flushed to disk, then renamed (and the folder flushed), and a
shard enters the manifest, with each file's size and CRC-32 checksum, only
once both its files are complete. A run that is killed (even with
``SIGKILL``) leaves at most a shard in progress, which the next run into the
same folder writes again. Shards are cut from the dataset's batches exactly as
one process would batch it, so a resumed run, or one spread over processes,
writes the same maps as an uninterrupted single-process run.

Every shard is checked before any of it is read (its files' sizes and
checksums, its arrays' shapes, its samples' indices), and a rerun checks every
finished shard and computes the damaged or missing ones again. One run writes a
folder at a time: a second one is refused while the first holds the folder's
lock (an operating-system lock, released when its holder ends, however it
ends). A run into a folder written from another configuration refuses to
start and names what differs: the explainer's settings (method, layers, every
option; see :meth:`camkit.Explainer.settings`), the model's weights, the
dataset (its length and a fingerprint of sampled items), the sources, the
batch size and the storage options. See the "Whole datasets" page for what
can go wrong and what camkit does about each.

**Distributed.** Under ``torchrun --nproc_per_node=P`` the same call deals the
shards to the ranks round-robin; each rank writes its own shards and appends
a line per finished shard to its own part of the manifest
(``manifest.rank-00001.jsonl``), and rank 0 merges the parts into
``manifest.json`` at the end; rank 0 holds the folder's lock for the whole job
(see :mod:`camkit._engine.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit._engine.batch_items import check_keys, forward_inputs, split_batch
from camkit._engine.distributed import (
    Batches,
    Rank,
    barrier,
    gather,
    on_main,
    process_group,
    rank_share,
)
from camkit._engine.model_outputs import logits_in
from camkit._engine.option_checks import callable_or_none, device_or_none, flag
from camkit._store import manifest as manifests
from camkit._store.files import (
    output_folder,
    sha256_of,
    storage_error,
    sync_folder,
    write_atomically,
)
from camkit._store.fingerprints import dataset_fingerprint, model_fingerprint
from camkit._store.lock import WriterLock
from camkit._store.manifest import FORMAT, MANIFEST, PARTS, VERSION, part_name
from camkit._store.shards import RECORD, open_shard, shard_problem, write_shard
from camkit.errors import CamkitStorageError, CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.result import CAMResult

__all__ = ["MapRecord", "MapStore", "StoreCheck", "explain_dataset", "pseudo_masks"]

SOURCES = "sources.json"
"""The file of a store's per-sample sources (a JSON list), when the run gave them."""
DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
FIELDS: tuple[str, ...] = RECORD.names or ()

DatasetTarget = None | int | str | Callable[[Any], Any]
"""What to explain per batch: ``None`` (each sample's predicted class), ``"label"`` (the
batch's second item), a class index, or a function of the batch returning a camkit target."""

OnBatch = Callable[[Tensor, Tensor, CAMResult], None]
"""``on_batch(indices, x, result)``: called after each batch with its dataset indices."""


def explain_dataset(
    explainer: Explainer,
    loader: Any,
    out: str | os.PathLike[str] | None,
    *,
    target: DatasetTarget = None,
    dtype: str = "float32",
    upsample: bool = True,
    shard_batches: int = 4,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_batch: OnBatch | None = None,
    sources: Sequence[str] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
    forward_keys: Sequence[str] = (),
) -> MapStore | None:
    """Explain every sample of ``loader`` and write the maps to ``out``, resumably.

    The dataset is cut into batches of the loader's ``batch_size``, in index
    order (the loader's sampler and ``drop_last`` are not used: every sample
    is explained once); ``shard_batches`` consecutive batches make a shard,
    written to disk when complete. Samples already in ``out`` (a run that was
    interrupted) are skipped. Under ``torchrun`` the shards are dealt to the
    ranks; the call returns on every rank once the manifest is complete.

    Args:
        explainer: Any camkit :class:`~camkit.Explainer`, such as
            :class:`~camkit.GradCAM`; its :meth:`~camkit.Explainer.settings` are
            recorded, and a run with other settings refuses to resume.
        loader: A :class:`~torch.utils.data.DataLoader` over a map-style dataset,
            with a ``batch_size``, yielding ``x``, ``(x, labels, ...)``, or dicts of
            columns (a Hugging Face dataset ``with_format("torch")``; see ``input_key``).
        out: The folder to write (created if needed), or ``None`` to write
            nothing (for ``on_batch`` alone; nothing to resume then).
        target: ``None`` (each sample's predicted class), ``"label"`` (the
            batch's labels), a class index, or a function of the batch that
            returns a camkit target.
        dtype: How maps are stored: ``"float32"``, ``"float16"``, or ``"uint8"``
            (a [0, 1] map times 255, rounded).
        upsample: Maps at the input's resolution (``True``) or the layer's.
        shard_batches: Batches per shard: the most work a crash can cost,
            the unit in which the ranks share the work (small enough for
            every rank to get several), and the number of files (two per shard).
        device: Where each batch is moved; by default the device of the
            model's first parameter.
        progress: Show a progress bar (on rank 0).
        on_batch: Called as ``on_batch(indices, x, result)`` after each batch,
            for example to save overlays.
        sources: Where each sample came from, one string per dataset item (a
            file's path relative to the input folder, say): stored, read back as
            :attr:`MapRecord.source`, and part of what a resumed run must match.
        dataset_options: How the dataset was prepared (image size, standardization,
            a version: JSON values), recorded and part of what a resumed run must
            match.
        input_key: For dict batches, the column to explain; by default
            ``"pixel_values"``, ``"image"`` or ``"images"``, whichever the batches
            have (a batch with none of them, or two, is refused).
        label_key: For dict batches and ``target="label"``, the labels' column; by
            default ``"labels"`` or ``"label"``.
        forward_keys: For dict batches, the columns the model takes besides the input,
            passed to it as keyword inputs (a text model's ``"input_ids"`` and
            ``"attention_mask"``, say); recorded, and part of what a resumed run must match.

    Returns:
        The :class:`MapStore` of ``out`` (``None`` when ``out`` is ``None``).

    Raises:
        CamkitValueError: For options out of range, a loader camkit cannot
            batch by index, an ``out`` that is a file, or an ``out`` folder written
            with another configuration (the message names the differences).
        CamkitStorageError: If another run is writing the folder (the message
            names it), the folder's manifest is damaged (the message says how to
            repair it), or the folder cannot be written or the disk is full; the
            shards written before are readable with :class:`MapStore`, and a
            rerun resumes.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> data = TensorDataset(torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,)))
        >>> folder = tempfile.mkdtemp()
        >>> store = explain_dataset(GradCAM(model, "1"), DataLoader(data, batch_size=4), folder,
        ...                         target="label", progress=False)
        >>> len(store), store.map(7).shape
        (10, torch.Size([8, 8]))
    """
    explainer = _check_explainer(explainer)
    batches = Batches.of(loader)
    _check_options(dtype, shard_batches, upsample, explainer, target)
    folder = None if out is None else output_folder(out)
    device_or_none(device)
    callable_or_none(on_batch, "on_batch", "a function on_batch(indices, x, result)")
    source_list = _checked_sources(sources, batches.length)
    prepared = _json_options(dataset_options)
    check_keys(input_key, label_key, forward_keys)
    config: dict[str, Any] = {}  # what decides the maps, read from the data only for a store
    if out is not None:
        config = _config(explainer, batches, target, dtype, upsample, shard_batches, source_list)
        config["dataset_options"] = prepared
        config["input_key"], config["label_key"] = input_key, label_key
        if forward_keys:  # recorded only when given: stores written before it still resume
            config["forward_keys"] = list(forward_keys)
    shards = -(-batches.count // shard_batches)
    device = device if device is not None else _device_of(explainer.model)
    with process_group() as team, ExitStack() as held:
        if folder is not None:  # rank 0 holds the lock for the job; a refusal reaches all
            on_main(team, lambda: bool(held.enter_context(_locked(folder))))
        done = _prepare(folder, config, source_list, team, progress) if folder else set()
        todo = rank_share([s for s in range(shards) if s not in done], team)
        writer = _ShardWriter(folder, team) if folder is not None else None
        with writer or nullcontext():
            each = _PerBatch(target, device, dtype, upsample, on_batch,
                             (input_key, label_key, tuple(forward_keys)))  # fmt: skip
            _explain_shards(explainer, batches, todo, shard_batches, writer, team, progress, each)
        if folder is None:
            return None
        barrier(team)
        on_main(team, lambda: _finish(folder, config, shards))
    return MapStore(folder)


def _explain_shards(
    explainer: Explainer,
    batches: Batches,
    shards: Sequence[int],
    shard_batches: int,
    writer: _ShardWriter | None,
    team: Rank,
    progress: bool,
    each: _PerBatch,
) -> None:
    """Explain the batches of ``shards`` in order, handing each finished shard to ``writer``."""
    per_shard = [
        list(range(s * shard_batches, min((s + 1) * shard_batches, batches.count))) for s in shards
    ]
    ordered = [b for numbers in per_shard for b in numbers]
    bar = tqdm(
        total=len(batches.indices(ordered)),
        desc=f"explaining (rank {team.rank})" if team.size > 1 else "explaining",
        unit="sample",
        disable=not (progress and team.main),
        mininterval=0.5,
    )
    with bar:
        loaded = iter(batches.loader_for(ordered))
        for shard, numbers in zip(shards, per_shard, strict=True):
            parts = []
            for number in numbers:
                indices = torch.tensor(batches.indices([number]))
                parts.append(_explain_batch(explainer, next(loaded), indices, each))
                bar.update(len(indices))
            if writer is not None:
                writer.write(shard, parts)


@dataclass(frozen=True)
class MapRecord:
    """One sample's entry in a :class:`MapStore`.

    Attributes:
        index: The sample's index in the dataset.
        map: The map as float32 (a uint8 map divided by 255).
        target: The class explained, or -1 for a callable target.
        score: The explained score.
        prediction: The model's predicted class, or -1 if its output is not class scores.
        source: Where the sample came from (the ``sources`` the run was given,
            such as an image's path relative to the input folder), or ``None``.
    """

    index: int
    map: Tensor
    target: int
    score: float
    prediction: int
    source: str | None = None


@dataclass(frozen=True)
class StoreCheck:
    """What :meth:`MapStore.verify` found.

    Attributes:
        checked: How many shards were checked.
        damaged: The damaged shards, each with what is wrong with it (a file
            missing, truncated, or failing its checksum; arrays of another shape;
            another shard's samples).
        missing: The shards not written yet (the run was interrupted).
        problems: What is wrong with the store beyond its shards (its sources file).
    """

    checked: int
    damaged: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every shard written is intact (an interrupted store can be ``ok``)."""
        return not self.damaged and not self.problems


class MapStore:
    """The maps of a folder written by :func:`explain_dataset`, read lazily and checked.

    Opening a store reads the manifest only; each shard's files are checked
    when first needed (their sizes and CRC-32 checksums against the
    manifest, their arrays' shapes, their samples' indices) and then
    memory-mapped, so reading one sample's map reads that map's shard once to
    check it, and that map alone afterwards. A damaged shard raises
    :class:`~camkit.errors.CamkitStorageError` instead of returning its data;
    :meth:`verify` checks every shard at once. A store whose run was
    interrupted (or failed on a full disk) is readable too: :attr:`complete`
    is then ``False`` and it holds the shards finished so far.

    Args:
        path: The folder.
        checksums: Check each shard's CRC-32 when it is first opened (reading the
            shard once); ``False`` checks sizes, shapes and indices only.

    Raises:
        CamkitValueError: If the folder holds no camkit map store.
        CamkitStorageError: If its manifest is damaged (the message says how to
            repair it).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> data = TensorDataset(torch.randn(6, 1, 8, 8))
        >>> folder = tempfile.mkdtemp()
        >>> _ = explain_dataset(GradCAM(model, "1"), DataLoader(data, batch_size=4), folder,
        ...                     target=2, dtype="uint8", progress=False)
        >>> store = MapStore(folder)
        >>> record = store[5]
        >>> record.index, record.target, record.map.shape, store.complete
        (5, 2, torch.Size([8, 8]), True)
        >>> store.verify().ok
        True
    """

    def __init__(self, path: str | os.PathLike[str], *, checksums: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise CamkitTypeError(
                f"path: got {type(path).__name__}; allowed: the store's folder, a str or a Path"
            )
        flag(checksums, "checksums")
        self.path = Path(path)
        manifest = manifests.read(self.path)
        if manifest is None:
            raise CamkitValueError(
                f"path: {str(self.path)!r} holds no camkit map store (no {MANIFEST}); "
                f"write one with camkit.datasets.explain_dataset"
            )
        self.config: dict[str, Any] = manifest["config"]
        self.complete: bool = manifest["complete"]
        self.checksums = checksums
        self._shards: dict[int, dict[str, Any]] = {
            int(s): entry for s, entry in manifest["shards"].items()
        }
        try:
            self._per_shard = int(self.config["batch_size"]) * int(self.config["shard_batches"])
            self._length = int(self.config["dataset_length"])
            self._dtype = np.dtype(DTYPES[self.config["dtype"]])
        except (KeyError, TypeError, ValueError) as error:
            raise manifests.damaged(self.path / MANIFEST, f"its config lacks {error}") from error
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._sources: list[str] | None = None

    def __len__(self) -> int:
        return sum(int(e["count"]) for e in self._shards.values())

    def __contains__(self, index: object) -> bool:
        if isinstance(index, bool) or not isinstance(index, int):
            return False
        return 0 <= index < self._length and self._shard_of(index) in self._shards

    @property
    def indices(self) -> list[int]:
        """The dataset indices stored, in order."""
        return [i for s in sorted(self._shards) for i in self._expected(s)]

    def __getitem__(self, index: int) -> MapRecord:
        maps, records = self._arrays(index)
        row = index - self._shard_of(index) * self._per_shard
        record = records[row]
        sources = self._source_list()
        return MapRecord(
            index=int(record["index"]),
            map=_as_float(maps[row]),
            target=int(record["target"]),
            score=float(record["score"]),
            prediction=int(record["prediction"]),
            source=None if sources is None else sources[index],
        )

    def __iter__(self) -> Iterator[MapRecord]:
        for index in self.indices:
            yield self[index]

    def map(self, index: int) -> Tensor:
        """The map of dataset sample ``index``, float32 (a uint8 map divided by 255)."""
        maps, _ = self._arrays(index)
        return _as_float(maps[index - self._shard_of(index) * self._per_shard])

    def records(self) -> dict[str, Tensor]:
        """Every stored sample's ``index``, ``target``, ``score`` and ``prediction``, as
        tensors in index order (the maps are not read, but each shard is checked once)."""
        parts = [self._load(s)[1] for s in sorted(self._shards)]
        table = np.concatenate(parts) if parts else np.empty(0, RECORD)
        return {name: torch.from_numpy(np.ascontiguousarray(table[name])) for name in FIELDS}

    @property
    def sources(self) -> list[str] | None:
        """Each dataset item's source, as the run was given them, or ``None``."""
        return self._source_list()

    def digest(self, indices: Sequence[int]) -> str:
        """A digest of the stored data of samples ``indices``: the records (sizes and
        checksums) of the shards that hold them. It changes whenever one of those shards is
        written again with other bytes, so that what was made from them (the viewer's
        thumbnails) can be made again only when needed."""
        if isinstance(indices, Tensor) and indices.dim() == 1 and not indices.is_floating_point():
            indices = indices.tolist()
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise CamkitTypeError(
                f"indices: got {type(indices).__name__}; allowed: a list of sample indices"
            )
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int):
                raise CamkitTypeError(f"indices: expected ints, got {type(i).__name__}")
        shards = sorted({self._shard_of(i) for i in indices})
        missing = [s for s in shards if s not in self._shards]
        if missing:
            raise KeyError(f"indices: shards {missing[:5]} of {str(self.path)!r} are not stored")
        parts = [self._shards[s] for s in shards]
        return hashlib.sha256(json.dumps([self.config, parts], sort_keys=True).encode()).hexdigest()

    def verify(self) -> StoreCheck:
        """Check every shard written (sizes, checksums, shapes, indices) and the sources.

        Reads the whole store once. A rerun of :func:`explain_dataset` with the same
        settings computes the damaged and missing shards again.
        """
        damaged = {}
        for shard in sorted(self._shards):
            problem = self._problem(shard)
            if problem:
                damaged[shard] = problem
        shards = -(-self._length // self._per_shard)
        missing = [s for s in range(shards) if s not in self._shards]
        problems = []
        try:
            self._source_list()
        except CamkitStorageError as error:
            problems.append(str(error))
        return StoreCheck(len(self._shards), damaged, missing, problems)

    def _shard_of(self, index: int) -> int:
        return index // self._per_shard

    def _expected(self, shard: int) -> range:
        start = shard * self._per_shard
        return range(start, start + int(self._shards[shard]["count"]))

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, int):
            raise CamkitTypeError(f"index: expected an int, got {type(index).__name__}")
        shard = self._shard_of(index)
        if not 0 <= index < self._length:
            raise IndexError(f"index: got {index}; the dataset has {self._length} samples")
        if shard not in self._shards:
            raise KeyError(
                f"index: sample {index} is not stored yet (its shard {shard} is missing; "
                f"the run was interrupted): run explain_dataset into {str(self.path)!r} again"
            )
        return self._load(shard)

    def _problem(self, shard: int) -> str:
        entry = self._shards[shard]
        return shard_problem(self.path, entry, self._expected(shard), self._dtype, self.checksums)

    def _load(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._open:
            problem = self._problem(shard)
            if problem:
                raise CamkitStorageError(
                    f"shard {shard} of the store {str(self.path)!r} is damaged: {problem}. "
                    f"Its maps are not returned. To repair: rerun explain_dataset (or the "
                    f"camkit command) with the same settings into {str(self.path)!r}; it "
                    f"computes damaged shards again (`camkit verify {self.path}` lists them)"
                )
            self._open[shard] = open_shard(self.path, self._shards[shard])
        return self._open[shard]

    def _source_list(self) -> list[str] | None:
        expected = self.config.get("sources")
        if expected is None:
            return None
        if self._sources is None:
            path = self.path / SOURCES
            try:
                intact = sha256_of(path) == expected
                sources = json.loads(path.read_bytes()) if intact else None
            except (OSError, ValueError):
                sources = None
            if not isinstance(sources, list) or len(sources) != self._length:
                raise CamkitStorageError(
                    f"{str(path)!r} is missing or damaged (it fails its checksum); rerun "
                    f"explain_dataset with the same settings into {str(self.path)!r} to "
                    f"write it again"
                )
            self._sources = [str(s) for s in sources]
        return self._sources


def pseudo_masks(
    maps: Tensor,
    classes: Tensor,
    *,
    threshold: float = 0.5,
    background_below: float | None = None,
    offset: int = 1,
    ignore_index: int = 255,
) -> Tensor:
    """Pseudo-label masks for weakly supervised segmentation, from maps scaled to [0, 1].

    A pixel whose map value is at least ``threshold`` gets its sample's class
    plus ``offset`` (0 is kept for the background); a pixel below
    ``background_below`` (by default ``threshold``) gets 0; a pixel in between
    gets ``ignore_index``, the usual "do not train on this pixel" label.

    Args:
        maps: ``(N, *spatial)`` maps in [0, 1].
        classes: ``(N,)`` the class of each map.
        threshold: The least map value of a foreground pixel.
        background_below: The map value under which a pixel is background.
        offset: Added to each class (1 reserves label 0 for the background).
        ignore_index: The label of uncertain pixels.

    Returns:
        ``(N, *spatial)`` int64 masks.

    Example:
        >>> import torch
        >>> pseudo_masks(torch.tensor([[0.1, 0.4, 0.9]]), torch.tensor([2]),
        ...              threshold=0.6, background_below=0.3)
        tensor([[  0, 255,   3]])
    """
    low = threshold if background_below is None else background_below
    if not 0.0 <= low <= threshold <= 1.0:
        raise CamkitValueError(
            f"threshold: got threshold={threshold}, background_below={background_below}; "
            f"allowed: 0 <= background_below <= threshold <= 1"
        )
    if classes.dim() != 1 or len(classes) != len(maps):
        raise CamkitValueError(
            f"classes: expected shape ({len(maps)},), one class per map, got {tuple(classes.shape)}"
        )
    labels = (classes.long() + offset).view(-1, *([1] * (maps.dim() - 1))).expand(maps.shape)
    masks = torch.full(maps.shape, ignore_index, dtype=torch.long, device=maps.device)
    masks = torch.where(maps >= threshold, labels, masks)
    return torch.where(maps < low, torch.zeros_like(masks), masks)


def _check_explainer(explainer: object) -> Explainer:
    if not isinstance(explainer, Explainer):
        raise CamkitTypeError(
            f"explainer: expected a camkit explainer such as GradCAM(model, layer), got "
            f"{type(explainer).__name__}"
        )
    return explainer


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _check_options(
    dtype: str, shard_batches: int, upsample: bool, explainer: Explainer, target: DatasetTarget
) -> None:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CamkitValueError(f"dtype: got {dtype!r}; allowed: {', '.join(map(repr, DTYPES))}")
    if isinstance(shard_batches, bool) or not isinstance(shard_batches, int) or shard_batches < 1:
        raise CamkitValueError(f"shard_batches: got {shard_batches!r}; allowed: a positive int")
    explainer.check_options(upsample=upsample, differentiable=False)
    if isinstance(target, str) and target != "label":
        raise CamkitValueError(
            f"target: got {target!r}; allowed: None, 'label', a class index, or a function "
            f"of the batch"
        )
    if isinstance(target, bool) or not (
        target is None or isinstance(target, (int, str)) or callable(target)
    ):
        raise CamkitTypeError(
            f"target: got {type(target).__name__}; allowed: None, 'label', a class index, "
            f"or a function of the batch"
        )


def _target_name(target: DatasetTarget) -> str:
    if target is None:
        return "predicted"
    if isinstance(target, (int, str)):
        return str(target)
    return f"function {getattr(target, '__qualname__', type(target).__name__)}"


def _checked_sources(sources: Sequence[str] | None, length: int) -> list[str] | None:
    if sources is None:
        return None
    if (
        isinstance(sources, str)
        or not isinstance(sources, Sequence)
        or not all(isinstance(s, str) for s in sources)
    ):
        raise CamkitTypeError("sources: expected a sequence of strings, one per dataset item")
    if len(sources) != length:
        raise CamkitValueError(
            f"sources: got {len(sources)}; the dataset has {length} items, give one each"
        )
    return list(sources)


def _json_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if options is None:
        return None
    try:
        return dict(json.loads(json.dumps(dict(options))))
    except (TypeError, ValueError) as error:
        raise CamkitTypeError(
            f"dataset_options: expected a mapping of JSON values, got {options!r} ({error})"
        ) from error


def _sources_file(sources: list[str]) -> bytes:
    return json.dumps(sources).encode()


def _config(
    explainer: Explainer,
    batches: Batches,
    target: DatasetTarget,
    dtype: str,
    upsample: bool,
    shard_batches: int,
    sources: list[str] | None,
) -> dict[str, Any]:
    """What decides the maps: a run continues a folder's earlier runs only if it matches."""
    loader = batches.loader
    return {
        "format": FORMAT,
        "version": VERSION,
        "explainer": explainer.settings(),
        "model": type(explainer.model).__qualname__,
        "weights": model_fingerprint(explainer.model),
        "dataset_length": batches.length,
        "dataset": dataset_fingerprint(loader.dataset, loader.collate_fn),
        "sources": None if sources is None else hashlib.sha256(_sources_file(sources)).hexdigest(),
        "batch_size": batches.batch_size,
        "shard_batches": shard_batches,
        "target": _target_name(target),
        "dtype": dtype,
        "upsample": upsample,
    }


@dataclass(frozen=True)
class _PerBatch:
    """explain_dataset's options that each batch needs."""

    target: DatasetTarget
    device: torch.device | str
    dtype: str
    upsample: bool
    on_batch: OnBatch | None
    keys: tuple[str | None, str | None, tuple[str, ...]]  # input_key, label_key, forward_keys


def _explain_batch(
    explainer: Explainer, batch: Any, indices: Tensor, each: _PerBatch
) -> tuple[np.ndarray, np.ndarray]:
    """One batch's maps (as stored) and records."""
    target, by_label = each.target, each.target == "label"
    input_key, label_key, forward_keys = each.keys
    x, labels = split_batch(batch, input_key, label_key, labels=by_label)
    inputs = forward_inputs(batch, forward_keys, each.device)
    chosen: Any = labels if by_label else (target(batch) if callable(target) else target)
    x = x.to(each.device)
    result = explainer.explain(x, chosen, upsample=each.upsample, forward_kwargs=inputs)
    if result.scores.dim() != 1:
        raise CamkitValueError(
            f"target: gave {tuple(result.scores.shape)} scores for {len(x)} samples; a "
            f"dataset run stores one map per sample, so give one target per sample"
        )
    if each.on_batch is not None:
        each.on_batch(indices, x, result)
    records = np.empty(len(x), RECORD)
    records["index"] = indices.numpy()
    records["target"] = -1 if result.classes is None else result.classes.cpu().numpy()
    records["score"] = result.scores.float().cpu().numpy()
    records["prediction"] = _predictions(result.output, len(x))
    return _stored(result.maps.detach(), each.dtype), records


def _predictions(output: Any, n: int) -> np.ndarray:
    scores = logits_in(output)
    if isinstance(scores, Tensor) and scores.dim() == 2 and len(scores) == n:
        return scores.argmax(1).cpu().numpy()
    return np.full(n, -1, dtype=np.int64)


def _stored(maps: Tensor, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return maps.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return maps.to(torch.float16 if dtype == "float16" else torch.float32).cpu().numpy()


def _as_float(row: np.ndarray) -> Tensor:
    values = torch.from_numpy(np.array(row))
    return values.float().div_(255) if values.dtype == torch.uint8 else values.float()


# ----------------------------------------------------------------------------- the folder


def _locked(folder: Path) -> WriterLock:
    """The folder's writer lock, to enter; the folder is created if need be, and checked
    to be writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".camkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise storage_error(error, folder, folder) from error
    return WriterLock(folder)


def _prepare(
    folder: Path, config: dict[str, Any], sources: list[str] | None, team: Rank, progress: bool
) -> set[int]:
    """Check the folder against ``config`` and tidy it (rank 0, under the lock), and return
    its intact finished shards, on every rank."""
    configs = gather(team, config)
    done: set[int] = on_main(team, lambda: _prepared(folder, configs, sources, progress))
    barrier(team)  # every rank has the same finished shards before any writes
    return done


def _prepared(
    folder: Path, configs: list[dict[str, Any]], sources: list[str] | None, progress: bool
) -> set[int]:
    config = configs[0]
    for rank, other in enumerate(configs[1:], start=1):
        if manifests.differences(config, other):
            raise CamkitValueError(  # another rank's configuration differs from rank 0's
                f"out: rank {rank} would write other maps than rank 0 into {str(folder)!r} "
                f"({'; '.join(manifests.differences(config, other))})"
            )
    manifest = manifests.read(folder)
    parts = list(folder.glob(PARTS))
    if manifest is None:  # a new store (parts of one whose manifest was deleted are stale)
        manifest = {"config": config, "complete": False, "shards": {}}
    else:
        _check_same_run(folder, manifest["config"], config)
    shards = manifest["shards"]
    damaged = _damaged_shards(folder, shards, config, progress)
    for shard in damaged:
        del shards[shard]
    if damaged:
        warnings.warn(
            f"out: {len(damaged)} damaged shard(s) of {str(folder)!r} are computed again: "
            + "; ".join(f"shard {s}: {why}" for s, why in list(damaged.items())[:5]),
            RuntimeWarning,
            stacklevel=6,  # the caller of explain_dataset
        )
    if sources is not None:
        path = folder / SOURCES
        intact = path.is_file() and sha256_of(path) == config["sources"]
        if not intact:
            text = _sources_file(sources)
            write_atomically(path, folder, lambda handle: handle.write(text))
    manifest["complete"] = manifest["complete"] and not damaged and not parts
    manifests.write(folder, manifest)  # the parts are merged in: they go
    for stale in [*parts, *folder.glob("*.tmp")]:
        stale.unlink(missing_ok=True)
    sync_folder(folder)
    return {int(s) for s in shards}


def _check_same_run(folder: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    differences = manifests.differences(old, new)
    if not differences:
        return
    hint = ""
    if any(d.startswith("dataset.sha256") for d in differences):
        hint = (
            " (the dataset's sampled items differ: another dataset or order, other "
            "preprocessing, or random transforms, which give other maps on every run)"
        )
    raise CamkitValueError(
        f"out: {str(folder)!r} holds maps of another run ({'; '.join(differences)}){hint}; "
        f"write to an empty folder, or rerun with the same settings to resume"
    )


def _damaged_shards(
    folder: Path, shards: dict[str, Any], config: dict[str, Any], progress: bool
) -> dict[str, str]:
    """The finished shards that fail their check, with what is wrong (reads them all)."""
    per_shard = int(config["batch_size"]) * int(config["shard_batches"])
    dtype = np.dtype(DTYPES[config["dtype"]])
    damaged = {}
    for key in tqdm(
        sorted(shards, key=int),
        desc="checking finished shards",
        unit="shard",
        disable=not progress or not shards,
        leave=False,
    ):
        start = int(key) * per_shard
        expected = range(start, start + int(shards[key]["count"]))
        problem = shard_problem(folder, shards[key], expected, dtype)
        if problem:
            damaged[key] = problem
    return damaged


class _ShardWriter:
    """Writes one rank's shards, in a background thread, so that writing a shard (and
    flushing it to disk) overlaps the computation of the next.

    Each shard's files are written atomically (their checksums computed as they are
    written), then a line recording the shard is appended to the rank's part of the
    manifest, in shard order; at most one shard waits to be written. A failed write
    stops the writes after it and is raised in the caller's thread, at the next
    :meth:`write` or when the block ends.
    """

    def __init__(self, folder: Path, team: Rank) -> None:
        self.folder = folder
        self.path = folder / part_name(team.rank)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="camkit-writer")
        self._pending: Future[None] | None = None

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            if kind is None:
                self._wait()
        finally:
            self._pool.shutdown(wait=True)

    def write(self, shard: int, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Queue ``shard`` (its batches' maps and records) for writing."""
        self._wait()
        self._pending = self._pool.submit(self._write, shard, parts)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # raises the writer's error here

    def _write(self, shard: int, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        maps = np.concatenate([m for m, _ in parts])
        records = np.concatenate([r for _, r in parts])
        entry = write_shard(self.folder, shard, maps, records)
        line = (json.dumps({"shard": shard, **entry}) + "\n").encode()
        try:  # an append costs the same however many shards came before
            with open(self.path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise storage_error(error, self.path, self.folder) from error


def _finish(folder: Path, config: dict[str, Any], shards: int) -> None:
    """Merge the ranks' parts into ``manifest.json`` and check every shard is there."""
    manifest = manifests.read(folder) or {"config": config, "complete": False, "shards": {}}
    missing = [s for s in range(shards) if str(s) not in manifest["shards"]]
    if missing:
        raise CamkitStorageError(
            f"out: shards {missing[:10]} of {str(folder)!r} were not written by any rank"
        )
    manifest.update(config=config, complete=True)
    manifest["shards"] = dict(sorted(manifest["shards"].items(), key=lambda kv: int(kv[0])))
    manifests.write(folder, manifest)
    for part in folder.glob(PARTS):
        part.unlink()
    sync_folder(folder)
