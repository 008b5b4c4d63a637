"""torchfs: PyTorch integration of the torchfs filesystem.

- ``PlanSampler`` wraps any sampler and publishes each epoch's read plan to
  ``<mount>/.torchfs/plan`` before the first index is yielded, so the
  client prefetches along it (``PlanSampler.for_files`` for a list of
  files).
- ``stats(mount)`` reads the client's cache counters.
- ``write_plan`` / ``format_plan`` for other loaders.

Importing this package does not import torch.
"""

from .plan import (
    NotATorchfsMount,
    PlanRejected,
    escape_path,
    find_mount,
    format_plan,
    is_mount,
    write_plan,
)
from .stats import delta, stats

__version__ = "0.1.0"

__all__ = [
    "NotATorchfsMount",
    "PlanRejected",
    "PlanSampler",
    "delta",
    "escape_path",
    "find_mount",
    "format_plan",
    "is_mount",
    "stats",
    "write_plan",
]


def __getattr__(name):
    # The sampler module imports torch when present: load it on first use.
    if name == "PlanSampler":
        from .sampler import PlanSampler

        return PlanSampler
    raise AttributeError(f"module 'torchfs' has no attribute {name!r}")
