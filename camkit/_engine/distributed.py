"""Work spread over processes with PyTorch's own engine (``torch.distributed``, ``torchrun``).

camkit schedules nothing itself. A dataset is cut into batches exactly as one
process would cut it (batch ``b`` holds samples ``b * B`` to ``b * B + B - 1``);
the batches (or shards of batches) are dealt to the ranks round-robin. Every
batch is then the same batch as in a single process, so per-sample results are
bitwise identical whatever the number of processes, and no sample is lost or
repeated when the dataset's length does not divide.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from camkit._engine import state
from camkit.errors import CamkitTypeError, CamkitValueError


@dataclass(frozen=True)
class Rank:
    """This process's rank among ``size`` processes (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes shared files and prints."""
        return self.rank == 0


@contextmanager
def process_group() -> Iterator[Rank]:
    """The process group of the block: the caller's, or one started here under ``torchrun``.

    If ``torch.distributed`` is already initialized, its default group is used
    and left running. Otherwise, if the environment comes from ``torchrun``
    (``WORLD_SIZE`` above 1), a group is started (NCCL when CUDA is available,
    gloo otherwise; torchrun's rendezvous variables say where) and kept until
    the process exits, for every later call to use: a group cannot be started a
    second time from torchrun's rendezvous (gloo's ranks would connect to the
    first group's addresses), so one script that explains two datasets would
    fail on the second. Otherwise the block runs as rank 0 of 1.
    """
    if dist.is_available() and dist.is_initialized():
        yield Rank(dist.get_rank(), dist.get_world_size())
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Rank()
        return
    if not dist.is_available():
        raise CamkitValueError(
            "WORLD_SIZE: set above 1 (a torchrun launch), but this torch has no "
            "torch.distributed; run one process"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(_destroy_at_exit)
    yield Rank(dist.get_rank(), dist.get_world_size())


def _destroy_at_exit() -> None:
    """Destroy the process group camkit started, as the process exits; then let go of the
    tensors of its exchanges (see :func:`gather`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    with state.EXCHANGED_LOCK:
        state.EXCHANGED.clear()


def barrier(team: Rank) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if team.size > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def gather(team: Rank, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank.

    What :func:`torch.distributed.all_gather_object` does (pickles, their sizes gathered,
    then the pickles padded to the longest), but the tensors exchanged are kept
    (:data:`~camkit._engine.state.EXCHANGED`, emptied: a few hundred bytes each) until
    the group camkit started ends. A collective's work holds its tensors, and where the
    backend's own thread frees the work last (later collectives, a barrier, keep it
    alive), freeing a tensor Python made needs the interpreter lock. On torch 2.4,
    gloo's group then deadlocks as it is destroyed (its destructor holds the lock and
    waits for that thread): a third to a half of two-process runs hung at exit (py-spy,
    in tests/test_cli.py under the oldest versions .ci/run tests). Tensors Python still
    holds are freed by Python, not by that thread.
    """
    if team.size == 1:
        return [value]
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    payload = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8).to(device)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(team.size)]
    dist.all_gather(sizes, size)
    lengths: list[int] = torch.cat(sizes).tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: len(payload)] = payload
    received = [torch.empty_like(padded) for _ in range(team.size)]
    dist.all_gather(received, padded)
    together = torch.stack(received).cpu().numpy()
    exchanged = [payload, size, *sizes, padded, *received]
    for tensor in exchanged:
        tensor.data = tensor.new_empty(0)  # its memory goes now; the tensor stays (see above)
    with state.EXCHANGED_LOCK:
        state.EXCHANGED.extend(exchanged)
    return [pickle.loads(row[:n].tobytes()) for row, n in zip(together, lengths, strict=True)]


_T = TypeVar("_T")


def on_main(team: Rank, work: Callable[[], _T]) -> _T:
    """Run ``work()`` on rank 0 and give every rank its result, or raise its error on every
    rank (so that no rank waits at a barrier for a rank that has failed)."""
    outcome: tuple[bool, Any] = (True, None)
    if team.main:
        try:
            outcome = (True, work())
        except Exception as error:  # handed to every rank, raised there
            if team.size == 1:
                raise
            outcome = (False, error)
    ok, value = gather(team, outcome)[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def rank_share(items: Sequence[int], team: Rank) -> list[int]:
    """This rank's share of ``items``: every ``size``-th, starting at its rank."""
    return list(items[team.rank :: team.size])


@dataclass(frozen=True)
class Batches:
    """How one process would batch a :class:`~torch.utils.data.DataLoader`'s dataset, in order."""

    loader: DataLoader[Any]
    length: int
    batch_size: int

    @classmethod
    def of(cls, loader: object, name: str = "loader") -> Batches:
        """Check that ``loader`` is a DataLoader over a map-style dataset with a batch size."""
        if not isinstance(loader, DataLoader):
            raise CamkitTypeError(
                f"{name}: expected a torch.utils.data.DataLoader, got {type(loader).__name__}"
            )
        dataset = loader.dataset
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise CamkitValueError(
                f"{name}: its dataset ({type(dataset).__name__}) is iterable-style; camkit needs "
                f"a map-style dataset (with __len__ and __getitem__), to know each sample's index"
            )
        if len(dataset) == 0:
            raise CamkitValueError(f"{name}: its dataset is empty")
        if loader.batch_size is None:  # a batch_sampler of its own, or batch_size=None
            custom = loader.batch_sampler is not None
            why = "a custom batch_sampler" if custom else "batch_size=None"
            raise CamkitValueError(
                f"{name}: has {why}; give a DataLoader with batch_size= (camkit batches the "
                f"dataset in order, by that size)"
            )
        return cls(loader, len(dataset), int(loader.batch_size))

    @property
    def count(self) -> int:
        """The number of batches, the last one possibly smaller."""
        return -(-self.length // self.batch_size)

    def indices(self, batches: Sequence[int]) -> list[int]:
        """The dataset indices of the given batches, in order."""
        size, length = self.batch_size, self.length
        return [i for b in batches for i in range(b * size, min((b + 1) * size, length))]

    def loader_for(self, batches: Sequence[int]) -> DataLoader[Any]:
        """A DataLoader yielding exactly ``batches``, in order, with the original's workers,
        collate function and pinning (its sampler and ``drop_last`` are not used)."""
        original = self.loader
        dataset: Dataset[Any] = Subset(original.dataset, self.indices(batches))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=original.num_workers,
            collate_fn=original.collate_fn,
            pin_memory=original.pin_memory,
            timeout=original.timeout,
            worker_init_fn=original.worker_init_fn,
            persistent_workers=False,
        )
