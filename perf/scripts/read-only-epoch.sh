#!/usr/bin/env bash
# Warm epochs of many small files (N x 100 KiB, 4 reader processes, open,
# read, close per file) on ext4, through a read-write torchfs mount, and
# through a read-only one (`torchfs mount --read-only`, no round trip per
# open), one after the other in one run; samples/s per epoch. The torchfs
# dataset is frozen (`torchfs freeze`); a second, unfrozen copy is read
# through the read-only mount too. Each with Python's buffered open (an
# isatty ioctl per file: a FUSE round trip) and unbuffered (none).
#
#   perf/scripts/read-only-epoch.sh [N] [EPOCHS]     # as root; default 10000 4
#
# Needs a release build (cargo build --release -p torchfs-cli). Everything
# it starts is stopped and unmounted on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
EPOCHS=${2:-4}
BIN=${BIN:-target/release/torchfs}
EPOCH=perf/scripts/warm-epoch.py
DIR=$(mktemp -d /var/tmp/torchfs-ro-epoch-XXXXXX)
PIDS=()

cleanup() {
  for m in "$DIR/ro" "$DIR/mnt"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

wait_mounted() {
  for _ in $(seq 1 300); do
    mountpoint -q "$1" && return 0
    sleep 0.2
  done
  echo "read-only-epoch: $1 was not mounted; logs in $DIR" >&2
  exit 1
}

mkdir -p "$DIR/mnt" "$DIR/ro" "$DIR/local"
"$BIN" up --dir "$DIR/cluster" --mount "$DIR/mnt" --no-demo >"$DIR/up.log" 2>&1 &
PIDS+=($!)
wait_mounted "$DIR/mnt"
# `torchfs up`'s default ports: the default of --metad.
METAD_ARGS=(--metad 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403)

python3 "$EPOCH" "$DIR/local/ds" "$N" write
python3 "$EPOCH" "$DIR/mnt/ds" "$N" write
python3 "$EPOCH" "$DIR/mnt/live" "$N" write
"$BIN" freeze "$DIR/mnt/ds" "${METAD_ARGS[@]}" >/dev/null
sync

"$BIN" mount "$DIR/ro" --read-only "${METAD_ARGS[@]}" >"$DIR/ro.log" 2>&1 &
PIDS+=($!)
wait_mounted "$DIR/ro"

echo "samples/s per epoch ($N files x 100 KiB, 4 processes; the first epoch reads what the writes left cached):"
echo "| files | open | epochs |"
echo "| --- | --- | --- |"
for open in buffered raw; do
  arg=""
  [ "$open" = raw ] && arg=raw
  echo "| ext4 | $open | $(python3 "$EPOCH" "$DIR/local/ds" "$N" read "$EPOCHS" $arg) |"
  echo "| torchfs, frozen, read-write mount | $open | $(python3 "$EPOCH" "$DIR/mnt/ds" "$N" read "$EPOCHS" $arg) |"
  echo "| torchfs, frozen, --read-only mount | $open | $(python3 "$EPOCH" "$DIR/ro/ds" "$N" read "$EPOCHS" $arg) |"
  echo "| torchfs, not frozen, --read-only mount | $open | $(python3 "$EPOCH" "$DIR/ro/live" "$N" read "$EPOCHS" $arg) |"
done
