"""appender.py PATH WRITER N flock|lockf: appends N lines "w<WRITER> <i>\n".

The file is opened once, O_WRONLY|O_APPEND. Each line is one write(2) under
an exclusive lock of the whole file: fcntl.flock(LOCK_EX) or
fcntl.lockf(LOCK_EX) (a POSIX record lock). There is no fsync: the unlock
alone must publish the line to the next holder, on any mount.
"""

import fcntl
import os
import sys

from mwlib import ready_then_wait_go, write_all


def main():
    path, writer, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode == "flock":
        lock = lambda fd: fcntl.flock(fd, fcntl.LOCK_EX)
        unlock = lambda fd: fcntl.flock(fd, fcntl.LOCK_UN)
    elif mode == "lockf":
        lock = lambda fd: fcntl.lockf(fd, fcntl.LOCK_EX)
        unlock = lambda fd: fcntl.lockf(fd, fcntl.LOCK_UN)
    else:
        raise SystemExit(f"unknown lock mode {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    ready_then_wait_go()
    for i in range(n):
        lock(fd)
        write_all(fd, f"w{writer} {i}\n".encode())
        unlock(fd)
    os.close(fd)
    print(f"appended {n} lines")


if __name__ == "__main__":
    main()
