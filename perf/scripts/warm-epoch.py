#!/usr/bin/env python3
"""Epochs over many small files, read whole in a shuffled order by 4
processes (open, read, close per file): samples/s per epoch.

    warm-epoch.py DIR N write      # N files of 100 KiB: DIR/f00000 ...
    warm-epoch.py DIR N read E     # E epochs; the first is cold if caches were dropped
    warm-epoch.py DIR N read E raw # the same with unbuffered opens (no isatty ioctl)

Used for the frozen-dataset warm-epoch figures in the README: the same
files on ext4 and in a frozen torchfs directory, run one after the other.
"""
import os
import random
import sys
import time
from multiprocessing import Pool

PROCS = 4
# Python's buffered open asks the file isatty (an ioctl, TCGETS): a FUSE
# round trip per file on a FUSE mount, none on ext4. `raw` opens unbuffered
# (no ioctl), as a reader in C or Rust would.
BUFFERING = 0 if sys.argv[-1:] == ["raw"] else -1


def read(paths):
    total = 0
    for p in paths:
        with open(p, "rb", buffering=BUFFERING) as f:
            total += len(f.read())
    return total


def epoch(pool, names, seed):
    order = names[:]
    random.Random(seed).shuffle(order)
    chunks = [order[i::PROCS] for i in range(PROCS)]
    t0 = time.monotonic()
    pool.map(read, chunks)
    return len(names) / (time.monotonic() - t0)


def main():
    root, n, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    names = [os.path.join(root, f"f{i:05d}") for i in range(n)]
    if cmd == "write":
        os.makedirs(root, exist_ok=True)
        data = os.urandom(100 * 1024)
        for p in names:
            with open(p, "wb") as f:
                f.write(data)
    elif cmd == "read":
        # The workers start before the clock does, as a DataLoader's
        # persistent workers would.
        with Pool(PROCS) as pool:
            pool.map(read, [[] for _ in range(PROCS)])
            rates = [epoch(pool, names, s) for s in range(int(sys.argv[4]))]
        print(" ".join(f"{r:.0f}" for r in rates))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
