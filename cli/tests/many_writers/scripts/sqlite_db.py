"""sqlite_db.py init DB | write DB WRITER N | check DB

init:  creates table t(writer, i) in rollback-journal mode (journal_mode=DELETE).
write: N transactions BEGIN IMMEDIATE; INSERT (WRITER, i); COMMIT, each
       retried while the database is locked or busy (busy timeout 60 s).
       Prints "ok <i>" once each COMMIT has returned (acknowledged).
       Any other error ends the writer with a non-zero status.
check: prints one JSON object: {"integrity": [...], "rows": {writer:
       [i, ...]}, "journal_mode": ..., "error": ...}.
"""

import json
import sqlite3
import sys
import time

from mwlib import ready_then_wait_go

BUSY_MS = 60_000
GIVE_UP_S = 170


def connect(db):
    con = sqlite3.connect(db, timeout=BUSY_MS / 1000, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    return con


def is_locked(e):
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def init(db):
    con = connect(db)
    mode = con.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    if mode != "delete":
        raise SystemExit(f"journal_mode is {mode!r}, wanted 'delete'")
    con.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, i INTEGER NOT NULL)"
    )
    con.close()


def explain(e):
    """SQLite's extended error name (e.g. SQLITE_IOERR_FSTAT), where Python has it."""
    return f"{e} ({getattr(e, 'sqlite_errorname', 'no extended code')})"


def write(db, writer, n):
    con = connect(db)
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "delete":
        raise SystemExit(f"journal_mode is {mode!r}, wanted 'delete'")
    ready_then_wait_go()
    deadline = time.monotonic() + GIVE_UP_S
    retries = 0
    for i in range(n):
        while True:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"writer {writer}: gave up at row {i} after {GIVE_UP_S} s ({retries} retries)"
                )
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if not is_locked(e):
                    raise SystemExit(f"writer {writer}: BEGIN at row {i}: {explain(e)}") from e
                retries += 1
                continue
            try:
                con.execute("INSERT INTO t(writer, i) VALUES (?, ?)", (writer, i))
                con.execute("COMMIT")
                print(f"ok {i}", flush=True)
                break
            except sqlite3.OperationalError as e:
                if not is_locked(e):
                    raise SystemExit(f"writer {writer}: row {i}: {explain(e)}") from e
                retries += 1
                if con.in_transaction:
                    con.execute("ROLLBACK")
    con.close()
    print(f"committed {n} transactions, {retries} retries")


def check(db):
    out = {"integrity": None, "rows": {}, "journal_mode": None, "error": None}
    try:
        con = connect(db)
        out["journal_mode"] = con.execute("PRAGMA journal_mode").fetchone()[0]
        out["integrity"] = [r[0] for r in con.execute("PRAGMA integrity_check")]
        for w, i in con.execute("SELECT writer, i FROM t ORDER BY writer, i"):
            out["rows"].setdefault(str(w), []).append(i)
        con.close()
    except sqlite3.Error as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


def main():
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "init":
        init(db)
    elif cmd == "write":
        write(db, int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "check":
        check(db)
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()
