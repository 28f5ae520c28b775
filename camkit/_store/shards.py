"""A shard's two files: written with their checksums, checked before they are read.

A shard holds the maps of a run of consecutive batches
(``shard-000000.maps.npy``) and their records (``shard-000000.records.npy``).
:func:`write_shard` writes both atomically and returns the record the
manifest keeps: sizes and CRC-32 checksums. :func:`shard_problem` checks a
shard against that record (the files exist, have the recorded sizes and
checksums) and against the store (array shapes and dtypes, the samples'
dataset indices): a damaged, truncated, deleted, swapped or bit-flipped
shard is found before any of it is returned as data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camkit._store.files import checksum_of, sync_folder, write_atomically

RECORD = np.dtype([("index", "<i8"), ("target", "<i8"), ("score", "<f4"), ("prediction", "<i8")])
"""One sample's record: its dataset index, the class explained (-1 for a callable target),
the explained score, and the model's predicted class (-1 if the output is not class scores)."""


def shard_files(shard: int) -> tuple[str, str]:
    """The names of shard ``shard``'s maps and records files."""
    return f"shard-{shard:06d}.maps.npy", f"shard-{shard:06d}.records.npy"


def write_shard(folder: Path, shard: int, maps: np.ndarray, records: np.ndarray) -> dict[str, Any]:
    """Write the shard's two files atomically, flush the folder, and return its record."""
    entry: dict[str, Any] = {"count": len(records)}
    for kind, name, array in zip(("maps", "records"), shard_files(shard), (maps, records),
                                 strict=True):  # fmt: skip
        sizes: list[int] = []

        def save(handle: Any, array: np.ndarray = array, sizes: list[int] = sizes) -> None:
            _save_npy(handle, array)
            sizes.append(handle.size)

        entry[f"{kind}_crc32"] = write_atomically(folder / name, folder, save)
        entry[kind], entry[f"{kind}_bytes"] = name, sizes[0]
    sync_folder(folder)
    return entry


def _save_npy(handle: Any, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (what :func:`numpy.save` writes), its bytes handed
    over uncopied: a shard's checksum is computed on the way, at no extra copy."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
    if array.size:
        handle.write(array.data.cast("B"))


def shard_problem(
    folder: Path,
    entry: dict[str, Any],
    expected: Sequence[int],
    dtype: np.dtype[Any],
    checksums: bool = True,
) -> str:
    """What is wrong with a shard's files, or ``""``: missing, of another size, failing its
    checksum (with ``checksums``), or holding other arrays than the record says
    (``expected`` are its samples' dataset indices, ``dtype`` its maps' dtype)."""
    for kind in ("maps", "records"):
        path = folder / entry[kind]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{entry[kind]} is missing"
        except OSError as error:
            return f"{entry[kind]} cannot be read ({error})"
        recorded = entry[f"{kind}_bytes"]
        if size != recorded:
            return f"{entry[kind]} has {size} bytes, {recorded} when written"
        if checksums:
            try:
                digest = checksum_of(path)
            except OSError as error:
                return f"{entry[kind]} cannot be read ({error})"
            if digest != entry[f"{kind}_crc32"]:
                return f"{entry[kind]} fails its CRC-32 checksum (its bytes changed)"
    try:
        maps, records = open_shard(folder, entry)
    except (OSError, ValueError, EOFError) as error:
        return f"its files cannot be read as arrays ({type(error).__name__}: {error})"
    count = len(expected)
    if records.dtype != RECORD or records.shape != (count,):
        return f"{entry['records']} holds {records.shape} {records.dtype}, not {count} records"
    if maps.dtype != dtype or maps.shape[:1] != (count,):
        return f"{entry['maps']} holds {maps.shape} {maps.dtype}, not {count} {dtype} maps"
    if not np.array_equal(records["index"], np.asarray(expected, dtype=np.int64)):
        return f"{entry['records']} holds the samples of another shard"
    return ""


def open_shard(folder: Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The shard's maps and records, memory-mapped."""
    maps = np.load(folder / entry["maps"], mmap_mode="r")
    records = np.load(folder / entry["records"], mmap_mode="r")
    return maps, records
