"""The plan format (version 1) and publishing a plan to a torchfs mount.

A plan declares the reads of one rank for one epoch, in order::

    torchfs-plan 1
    epoch 3
    rank 0
    items 2

    train/000017.jpg
    shards/big-0.bin<TAB>1048576<TAB>1048576

Items are paths relative to the mount root, or a path, offset and length
(a byte range) separated by TABs. ``%``, TAB, LF and CR in a path are
written ``%25``, ``%09``, ``%0A``, ``%0D``. The client parses the plan when
the file is closed; a malformed plan makes ``close()`` fail with EINVAL and
changes nothing (the reason is in ``stats()["last_plan_error"]``).
"""

import errno
import os
from typing import Iterable, Optional, Sequence, Tuple, Union

PLAN_MAGIC = "torchfs-plan"
PLAN_VERSION = 1
CONTROL_DIR = ".torchfs"

#: A plan item: a path, or (path, offset, length).
Item = Union[str, Tuple[str, int, int]]


class PlanRejected(ValueError):
    """The mount refused a plan (EINVAL); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(f"torchfs rejected the plan: {reason}")
        self.reason = reason


class NotATorchfsMount(RuntimeError):
    """No torchfs mount (a directory with ``.torchfs/``) above a path."""


def escape_path(path: str) -> str:
    return (
        path.replace("%", "%25")
        .replace("\t", "%09")
        .replace("\n", "%0A")
        .replace("\r", "%0D")
    )


def _relative(mount: Optional[str], path: str) -> str:
    path = os.fspath(path)
    if os.path.isabs(path):
        if mount is None:
            raise ValueError(f"absolute path {path!r} needs the mount to be known")
        rel = os.path.relpath(path, mount)
        if rel == os.curdir or rel.startswith(os.pardir):
            raise ValueError(f"{path!r} is not under the mount {mount!r}")
        return rel
    return path


def format_plan(epoch: int, rank: int, items: Iterable[Item], mount: Optional[str] = None) -> bytes:
    """Renders a plan; absolute paths are made relative to ``mount``."""
    lines = []
    for item in items:
        if isinstance(item, tuple):
            path, offset, length = item
            if int(length) <= 0 or int(offset) < 0:
                raise ValueError(f"bad byte range {offset}+{length} of {path!r}")
            lines.append(f"{escape_path(_relative(mount, path))}\t{int(offset)}\t{int(length)}")
        else:
            lines.append(escape_path(_relative(mount, item)))
    head = f"{PLAN_MAGIC} {PLAN_VERSION}\nepoch {int(epoch)}\nrank {int(rank)}\nitems {len(lines)}\n\n"
    body = "\n".join(lines) + ("\n" if lines else "")
    return (head + body).encode("utf-8")


def is_mount(path: str) -> bool:
    return os.path.exists(os.path.join(path, CONTROL_DIR, "stats"))


def find_mount(path: str) -> str:
    """The torchfs mount holding ``path`` (the nearest ancestor with
    ``.torchfs/``; it is not listed by ``ls`` but can be looked up)."""
    d = os.path.abspath(os.fspath(path))
    if not os.path.isdir(d):
        d = os.path.dirname(d)
    while True:
        if is_mount(d):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            raise NotATorchfsMount(f"{path!r} is not on a torchfs mount")
        d = parent


def _write(mount: str, data: bytes) -> None:
    """Writes one plan in one open; close() is where the client parses it."""
    fd = os.open(os.path.join(mount, CONTROL_DIR, "plan"), os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def write_plan(mount: str, epoch: int, rank: int, items: Sequence[Item]) -> None:
    """Publishes the plan of ``rank`` for ``epoch``; raises PlanRejected
    (with the client's reason) when the mount refuses it."""
    data = format_plan(epoch, rank, items, mount)
    try:
        _write(mount, data)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        reason = e.strerror or "invalid plan"
        try:
            from .stats import stats

            reason = stats(mount).get("last_plan_error") or reason
        except (OSError, ValueError):
            pass
        raise PlanRejected(reason) from e
