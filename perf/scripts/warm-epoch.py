#!/usr/bin/env python3
"""Epochs over many small files, read whole in a shuffled order by 4
processes (open, read, close per file): samples/s per epoch.

    warm-epoch.py DIR N write      # N files of 100 KiB: DIR/f00000 ...
    warm-epoch.py DIR N read E     # E epochs; the first is cold if caches were dropped

Used for the frozen-dataset warm-epoch figures in the README: the same
files on ext4 and in a frozen torchfs directory, run one after the other.
"""
import os
import random
import sys
import time
from multiprocessing import Pool

PROCS = 4


def read(paths):
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(f.read())
    return total


def epoch(names, seed):
    order = names[:]
    random.Random(seed).shuffle(order)
    chunks = [order[i::PROCS] for i in range(PROCS)]
    t0 = time.monotonic()
    with Pool(PROCS) as pool:
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
        print(" ".join(f"{epoch(names, s):.0f}" for s in range(int(sys.argv[4]))))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
