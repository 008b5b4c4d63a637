"""A sampler wrapper that publishes each epoch's read plan before it yields
the first index, so the torchfs client can prefetch along it.

It works with any sampler (``RandomSampler``, ``DistributedSampler``, a
plain iterable of indices) and with ``DataLoader(num_workers>0)`` and
persistent workers: samplers run in the main process, which is where the
plan is written. torch is imported only if it is installed.
"""

import os
import warnings
from typing import Callable, List, Optional, Sequence

from .plan import Item, NotATorchfsMount, find_mount, write_plan

try:  # torch is optional: without it the wrapper is a plain iterable.
    from torch.utils.data import Sampler as _Base
except ImportError:  # pragma: no cover - exercised where torch is absent
    _Base = object


class _ListPaths:
    """index -> files[index] (picklable, unlike a lambda)."""

    def __init__(self, files: Sequence[str]):
        self.files = files

    def __call__(self, index: int) -> str:
        return self.files[index]


def _default_rank(sampler) -> int:
    rank = getattr(sampler, "rank", None)
    if isinstance(rank, int):
        return rank
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0"))


class PlanSampler(_Base):
    """Wraps ``sampler``; ``path_of(index)`` gives the file read for an
    index (a path, or ``(path, offset, length)`` for a byte range).

    - ``mount``: the torchfs mount point (default: found from the first
      path, which must then be absolute).
    - ``rank``: default ``sampler.rank`` (DistributedSampler), else
      ``torch.distributed``'s rank, else ``$RANK``, else 0.
    - ``lookahead``: also publish the next epoch's plan, so the client can
      keep what that epoch reads first. For samplers with ``set_epoch``
      (DistributedSampler) the next order is computed from the epoch
      number; for others it is drawn one epoch early and then yielded as
      drawn (the sampler's RNG is consumed one epoch earlier than without
      the wrapper; pass ``lookahead=False`` to avoid that).
    - ``strict``: raise when the plan cannot be published (not a torchfs
      mount, rejected); by default warn once and go on reading.

    Epochs: ``set_epoch(e)`` (forwarded to the sampler) sets the epoch of
    the next iteration; without it, each iteration is the next epoch.
    """

    def __init__(
        self,
        sampler,
        path_of: Callable[[int], Item],
        mount: Optional[str] = None,
        rank: Optional[int] = None,
        lookahead: bool = True,
        strict: bool = False,
    ):
        self.sampler = sampler
        self.path_of = path_of
        self.mount = mount
        self.rank = _default_rank(sampler) if rank is None else rank
        self.lookahead = lookahead
        self.strict = strict
        self.epoch = int(getattr(sampler, "epoch", 0))
        self._epoch_set = False
        self._drawn = None  # (epoch, order) drawn ahead, for samplers without set_epoch
        self._warned = False
        #: (epoch, number of items) of each plan published, newest last.
        self.published: List[tuple] = []

    @classmethod
    def for_files(cls, sampler, files: Sequence[str], **kwargs) -> "PlanSampler":
        """The common case: index i reads ``files[i]``."""
        return cls(sampler, _ListPaths(files), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def _order(self, epoch: int) -> List[int]:
        if self._drawn is not None and self._drawn[0] == epoch:
            order = self._drawn[1]
            self._drawn = None
            return order
        self._drawn = None
        return list(iter(self.sampler))

    def _next_order(self, epoch: int) -> Optional[List[int]]:
        if hasattr(self.sampler, "set_epoch"):
            saved = getattr(self.sampler, "epoch", epoch)
            self.sampler.set_epoch(epoch + 1)
            try:
                return list(iter(self.sampler))
            finally:
                self.sampler.set_epoch(saved)
        order = list(iter(self.sampler))
        self._drawn = (epoch + 1, order)
        return order

    def _publish(self, epoch: int, order: List[int]) -> None:
        try:
            items = [self.path_of(i) for i in order]
            if self.mount is None:
                first = items[0] if items else None
                path = first[0] if isinstance(first, tuple) else first
                if path is None or not os.path.isabs(path):
                    raise NotATorchfsMount("pass mount=... (paths are relative or the epoch is empty)")
                self.mount = find_mount(path)
            write_plan(self.mount, epoch, self.rank, items)
            self.published.append((epoch, len(items)))
        except (OSError, ValueError, RuntimeError) as e:
            if self.strict:
                raise
            if not self._warned:
                warnings.warn(f"torchfs: plan for epoch {epoch} not published: {e}")
                self._warned = True

    def __iter__(self):
        epoch = self.epoch
        order = self._order(epoch)
        self._publish(epoch, order)
        if self.lookahead:
            nxt = self._next_order(epoch)
            if nxt is not None:
                self._publish(epoch + 1, nxt)
        if not self._epoch_set:
            self.epoch = epoch + 1
        self._epoch_set = False
        return iter(order)
