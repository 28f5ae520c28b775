"""One writing job per store folder: an operating-system lock that dies with its holder.

The lock is ``fcntl.flock`` on the folder's ``writer.lock`` (``msvcrt.locking`` on
Windows). The kernel releases it when the holding process ends, however it
ends, so a killed run never leaves a stale lock behind; the file itself stays,
holding a line about its last holder (process, host, start time, command),
which a refused job quotes. Under ``torchrun`` rank 0 takes the lock for the
whole job; the other ranks write under it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from camkit.errors import CamkitStorageError

NAME = "writer.lock"
"""The lock file in a store folder."""


class WriterLock:
    """Hold the writer lock of ``folder`` for a ``with`` block, or raise at once.

    Raises:
        CamkitStorageError: If another process holds it (naming the folder and
            the holder).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / NAME
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> WriterLock:
        handle = open(self.path, "a+b")  # held open for the block
        try:
            if not _try_lock(handle):
                holder = _holder(handle)
                raise CamkitStorageError(
                    f"out: {str(self.folder)!r} is being written by another run ({holder}); "
                    f"wait for it to end, or write to another folder (one run writes a "
                    f"store at a time)"
                )
            handle.seek(1)  # byte 0 is the one Windows locks (and refuses to let others read)
            handle.truncate()
            handle.write(_about_this_process().encode())
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the file releases the lock


def _about_this_process() -> str:
    command = " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command[:300],
        }
    )


def _holder(handle: IO[bytes]) -> str:
    try:
        handle.seek(1)
        about: dict[str, Any] = json.loads(handle.read().decode())
        return (
            f"process {about['pid']} on {about['host']}, started {about['started']}: "
            f"{about['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


if sys.platform == "win32":  # pragma: no cover - CI runs on Linux
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
