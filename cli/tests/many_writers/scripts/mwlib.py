"""Shared by the helper scripts of the cli/tests/many_writers test.

block_bytes() must stay in step with block_bytes() in ../patterns.rs: the
8-byte little-endian word at absolute file offset 8*w holds (seed << 40) | w,
so a block's bytes name both the writer's seed and their own place in the
file (a block written at the wrong offset, zeros, or an older round's bytes
are all told apart by the checker).
"""

import array
import os
import sys
import time

WORD_BITS = 40


def block_bytes(off, length, seed):
    w0 = off // 8
    w1 = (off + length + 7) // 8
    base = seed << WORD_BITS
    words = array.array("Q", range(base + w0, base + w1))
    if sys.byteorder != "little":
        words.byteswap()
    raw = words.tobytes()
    skip = off - w0 * 8
    return raw[skip : skip + length]


def pwrite_all(fd, data, off):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        if n <= 0:
            raise OSError(f"pwrite at {off} returned {n}")
        view = view[n:]
        off += n


def write_all(fd, data):
    n = os.write(fd, data)
    if n != len(data):
        raise OSError(f"write of {len(data)} bytes returned {n}")


def ready_then_wait_go(timeout=120.0):
    """Says this process is ready (MW_READY), then waits for MW_GO to exist,
    so that every writer has its file open before any of them writes."""
    ready = os.environ.get("MW_READY")
    go = os.environ.get("MW_GO")
    if ready:
        with open(ready, "w") as f:
            f.write(str(os.getpid()))
    if not go:
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go signal ({go}) within {timeout} s")
        time.sleep(0.005)
