"""streamer.py PATH OFFSET LENGTH SEED PROGRESS: writes until killed.

Opens PATH O_RDWR and pwrites chunks of 256 KiB over [OFFSET, OFFSET+LENGTH)
again and again (pass p uses seed SEED+p), fsyncing after every 4 chunks and
then writing the number of fsyncs done to PROGRESS (a file off the mount).
It stops by itself only after 300 s, as a guard.
"""

import os
import sys
import time

from mwlib import block_bytes, pwrite_all

CHUNK = 256 << 10


def main():
    path, off, length, seed, progress = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    fd = os.open(path, os.O_RDWR)
    end = off + length
    fsyncs = 0
    chunks = 0
    t0 = time.monotonic()
    p = 0
    while time.monotonic() - t0 < 300:
        at = off
        while at < end:
            n = min(CHUNK, end - at)
            pwrite_all(fd, block_bytes(at, n, seed + p), at)
            at += n
            chunks += 1
            if chunks % 4 == 0:
                os.fsync(fd)
                fsyncs += 1
                tmp = progress + ".tmp"
                with open(tmp, "w") as f:
                    f.write(str(fsyncs))
                os.rename(tmp, progress)
        p += 1
    raise SystemExit("streamer was not killed within 300 s")


if __name__ == "__main__":
    main()
