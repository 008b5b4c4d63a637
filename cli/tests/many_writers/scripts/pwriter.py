"""pwriter.py PATH JSON: one of many writers of disjoint blocks of one file.

JSON: {"blocks": [[offset, length, seed], ...], "order_seed": N,
"fsync_every": K}. Opens PATH O_RDWR (no O_TRUNC, no O_CREAT), waits for
the go signal, pwrites the blocks in a random order (seeded), fsyncs after
every K blocks and at the end, closes, and exits 0.
"""

import json
import os
import random
import sys

from mwlib import block_bytes, pwrite_all, ready_then_wait_go


def main():
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    blocks = [tuple(b) for b in spec["blocks"]]
    random.Random(spec["order_seed"]).shuffle(blocks)
    every = max(1, int(spec.get("fsync_every", 3)))
    fd = os.open(path, os.O_RDWR)
    ready_then_wait_go()
    for n, (off, length, seed) in enumerate(blocks, 1):
        pwrite_all(fd, block_bytes(off, length, seed), off)
        if n % every == 0:
            os.fsync(fd)
    os.fsync(fd)
    os.close(fd)
    print(f"wrote {len(blocks)} blocks, {sum(b[1] for b in blocks)} bytes")


if __name__ == "__main__":
    main()
