"""Everything camkit keeps in the process between calls, in one place, with its locks.

* :data:`HELD` (under :data:`HELD_LOCK`): the modules that calls in progress hold in
  eval mode, with the flag to restore (see :func:`camkit._engine.model.eval_mode`). State of
  calls in flight, not a cache: never cleared.
* :data:`WRITES_IN_PLACE` (under :data:`WRITES_LOCK`): per module, weakly, the parts of
  its output the network modifies in place, which camkit must therefore copy (see
  :func:`camkit._engine.hooks.capture`). Learnt again when forgotten.
* :data:`MATRICES`: interpolation matrices of the sizes maps were upsampled to, at most
  16 MiB in all (see :func:`camkit._engine.map_ops.upsample`). Made again when forgotten.
* :data:`TRACING`: one :mod:`torch.fx` trace at a time (fx patches
  ``torch.nn.Module.__call__`` for the whole process while it traces).

* The ``torch.distributed`` process group, where camkit started it under ``torchrun``:
  kept until the process exits, for later calls (see
  :func:`camkit._engine.distributed.process_group`).
* :data:`EXCHANGED` (under :data:`EXCHANGED_LOCK`): the tensors of the exchanges
  between ranks, emptied, kept until the group camkit started ends (see
  :func:`camkit._engine.distributed.gather`): a few hundred bytes per tensor, a few
  exchanges per dataset call.

:func:`clear_caches` forgets the two caches; nothing else outlives a call but the
process group camkit started and its exchanges' tensors.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["clear_caches"]

HELD_LOCK = threading.Lock()
HELD: dict[nn.Module, tuple[int, bool]] = {}
"""Modules that calls in progress hold in eval mode: how many calls, and the flag to restore."""

WRITES_LOCK = threading.Lock()
WRITES_IN_PLACE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], bool]] = (
    weakref.WeakKeyDictionary()
)
"""Per module, the parts of its output (by keys) the network modifies in place, so camkit
must copy them."""

EXCHANGED_LOCK = threading.Lock()
EXCHANGED: list[Tensor] = []
"""The (emptied) tensors of the exchanges between ranks, which Python, not the backend, frees."""

TRACING = threading.Lock()
"""Held while :mod:`torch.fx` traces a model."""

MATRIX_CACHE_BYTES = 16 * 2**20
"""The most memory the interpolation matrices kept between calls may take, all devices
together."""


class MatrixCache:
    """Least-recently-used interpolation matrices, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, int, torch.dtype, str], Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, torch.dtype, str], make: Callable[[], Tensor]) -> Tensor:
        """The matrix of ``key``, made by ``make()`` (and kept, if it fits) when missing."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        matrix = make()
        size = matrix.numel() * matrix.element_size()
        with self._lock:
            if size <= self.max_bytes and key not in self._entries:
                self._entries[key] = matrix
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self.bytes -= evicted.numel() * evicted.element_size()
        return matrix

    def clear(self) -> None:
        """Forget every matrix."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0


MATRICES = MatrixCache(MATRIX_CACHE_BYTES)


def clear_caches() -> None:
    """Forget what camkit keeps between calls: the interpolation matrices and which layers
    write to their outputs in place.

    Both are rebuilt as calls need them, so maps do not change; it frees their memory
    (at most 16 MiB of matrices), for instance between two models in a long-lived
    process. Safe while other threads explain.

    Example:
        >>> import camkit
        >>> camkit.clear_caches()
    """
    MATRICES.clear()
    with WRITES_LOCK:
        WRITES_IN_PLACE.clear()
