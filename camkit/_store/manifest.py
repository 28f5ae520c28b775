"""A store's manifest: its configuration and the record of every finished shard.

``manifest.json`` holds the run's configuration (what decides the maps, see
:func:`camkit.datasets.explain_dataset`), whether the run completed, and per
shard its two files with their sizes and CRC-32 checksums. During a run each
rank appends one JSON line per finished shard to its own part
(``manifest.rank-00000.jsonl``); the parts are merged into ``manifest.json``
when a run starts (resuming an interrupted one) and when it ends.

A manifest that cannot be parsed, or whose structure is not a store's, is
*damaged*: camkit says so, names the file and the repair, and never guesses.
A part's line that cannot be parsed (a crash while it was appended) records
nothing: its shard is written again by the next run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from camkit._store.files import sync_folder, write_atomically
from camkit.errors import CamkitStorageError

FORMAT = "camkit-maps"
VERSION = 2
"""The store format's version: 2 added checksums, the dataset fingerprint and sources."""
MANIFEST = "manifest.json"
PARTS = "manifest.rank-*.jsonl"
"""The ranks' parts of the manifest during a run: one JSON line per finished shard."""

ENTRY_FIELDS: dict[str, type] = {
    "maps": str,
    "records": str,
    "count": int,
    "maps_bytes": int,
    "records_bytes": int,
    "maps_crc32": str,
    "records_crc32": str,
}
"""A shard's record in the manifest: its two files, its sample count, each file's size
in bytes and CRC-32."""


def part_name(rank: int) -> str:
    """The file of rank ``rank``'s part of the manifest."""
    return f"manifest.rank-{rank:05d}.jsonl"


def damaged(path: Path, why: str) -> CamkitStorageError:
    """The error for a damaged manifest: what is wrong, and the repair."""
    folder = path.parent
    return CamkitStorageError(
        f"{str(path)!r} is damaged ({why}), so the store in {str(folder)!r} can be neither "
        f"read nor resumed: its shards cannot be checked without it. To repair: delete "
        f"{str(path)!r} and rerun explain_dataset (or the camkit command) with the same "
        f"settings into {str(folder)!r}; every map is computed again"
    )


def valid_entry(entry: object) -> bool:
    """Whether ``entry`` has the structure of a shard's record (its values unchecked)."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), kind) and not isinstance(entry.get(key), bool)
        for key, kind in ENTRY_FIELDS.items()
    )


def read(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest with the ranks' parts merged in, or ``None`` if it has none.

    Raises:
        CamkitStorageError: If ``manifest.json`` is damaged.
    """
    path = folder / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise damaged(path, f"{type(error).__name__}: {error}") from error
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(path, f"not JSON: {error}") from error
    config = manifest.get("config") if isinstance(manifest, dict) else None
    config = config if isinstance(config, dict) else {}
    if (
        config.get("format") == FORMAT and config.get("version") != VERSION
    ):  # before the structure: versions change it
        raise CamkitStorageError(
            f"{str(path)!r} is a map store of format version {config.get('version')}; "
            f"this camkit reads version {VERSION} (with checksums and a dataset "
            f"fingerprint). Write the maps again, into an empty folder"
        )
    problem = _structure_problem(manifest)
    if problem:
        raise damaged(path, problem)
    for part in sorted(folder.glob(PARTS)):
        for line in part.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # cut short by a crash: the shard is written again
            if isinstance(entry, dict) and _shard_number(entry.get("shard")) is not None:
                shard = entry.pop("shard")
                if valid_entry(entry):
                    manifest["shards"][str(shard)] = entry
    return dict(manifest)


def _shard_number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _structure_problem(manifest: object) -> str:
    if not isinstance(manifest, dict):
        return f"it holds a {type(manifest).__name__}, not a store's manifest"
    if not isinstance(manifest.get("config"), dict):
        return "it has no 'config'"
    if not isinstance(manifest.get("complete"), bool):
        return "it has no 'complete' flag"
    shards = manifest.get("shards")
    if not isinstance(shards, dict):
        return "it has no 'shards'"
    for key, entry in shards.items():
        if not key.isdigit() or not valid_entry(entry):
            return f"the record of shard {key!r} is not a shard's record"
    return ""


def write(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically and flush the folder."""
    text = json.dumps(manifest, indent=1).encode()
    write_atomically(folder / MANIFEST, folder, lambda handle: handle.write(text))
    sync_folder(folder)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], within: str = "") -> list[str]:
    """What differs between two configurations, naming nested settings by dotted keys."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(now, Mapping):
            found += differences(before, now, f"{within}{key}.")
        elif before != now:
            found.append(f"{within}{key}: {_short(before)} there, {_short(now)} now")
    return found


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "...")  # a SHA-256: its start tells two apart
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
