#!/usr/bin/env bash
# POSIX conformance of a real mount: pjdfstest and fsx (crates.io) against a
# fresh `torchfs up` cluster (3 metad voters, 6 storage nodes, the mount),
# run as root. Prints each suite's summary and fails on any failure.
#
#   ci/posix.sh [TORCHFS_BINARY]      (default target/debug/torchfs)
#   FSX_OPS=1000000 ci/posix.sh       (more fsx operations; CI runs 100,000)
#
# What pjdfstest leaves out, and why, is listed in the README (POSIX).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
torchfs=$(realpath "${1:-target/debug/torchfs}")
config=$(realpath ci/pjdfstest.toml)
fsx_ops=${FSX_OPS:-100000}
fsx_seed=${FSX_SEED:-20261202}
base_port=${POSIX_BASE_PORT:-27400}

if [ "$(id -u)" -ne 0 ]; then
  echo "posix: needs root (mounts, and pjdfstest switches users)" >&2
  exit 1
fi
command -v pjdfstest >/dev/null || cargo install --locked -q pjdfstest@0.2.2
command -v fsx >/dev/null || cargo install --locked -q fsx@0.3.2
# pjdfstest switches to nobody/nogroup and tests/tests (ci/pjdfstest.toml).
id tests >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin -U tests

work=$(mktemp -d /tmp/torchfs-posix.XXXXXX)
# pjdfstest's other users need search permission on every directory above.
chmod 0755 "$work"
mnt="$work/mnt"
up_pid=""
cleanup() {
  if [ -n "$up_pid" ]; then
    kill -INT "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

"$torchfs" up --no-demo --dir "$work/cluster" --mount "$mnt" --base-port "$base_port" \
  >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 120); do
  grep -q "torchfs is up" "$work/up.log" 2>/dev/null && break
  if ! kill -0 "$up_pid" 2>/dev/null; then
    echo "posix: torchfs up exited:" >&2
    tail -20 "$work/up.log" >&2
    exit 1
  fi
  sleep 0.5
done
grep -q "torchfs is up" "$work/up.log" || { echo "posix: cluster not up in 60 s" >&2; tail -20 "$work/up.log" >&2; exit 1; }

# pjdfstest's read-only tests remount with mount(8), which would hand a FUSE
# mount to the mount.fuse3 helper (that starts a new daemon); -i makes it a
# plain mount(2) MS_REMOUNT, which is what the tests mean.
shim="$work/bin"
mkdir -p "$shim"
printf '#!/bin/sh\nexec /usr/bin/mount -i "$@"\n' >"$shim/mount"
chmod +x "$shim/mount"

mkdir -m 0755 "$mnt/pjdfstest" "$work/secondary"
echo "posix: pjdfstest $(pjdfstest --version | awk '{print $2}') on $mnt/pjdfstest"
status=0
(cd "$mnt/pjdfstest" && PATH="$shim:$PATH" pjdfstest -c "$config" \
  -p "$mnt/pjdfstest" -s "$work/secondary") >"$work/pjdfstest.log" 2>&1 || status=1
grep -E "FAILED|skipped" "$work/pjdfstest.log" | sed 's/^/posix:   /' || true
grep "^Summary:" "$work/pjdfstest.log" | sed 's/^/posix: pjdfstest /'
# pjdfstest 0.2.2's open::einval_invalid_combination leaks an O_RDWR fd
# (nix's open returns a raw fd it never closes), and Linux refuses to
# remount a filesystem read-only while a file is open for writing: every
# erofs test that runs after it in the same process fails with "mount
# point is busy", on any filesystem. Those, and only those, run again in a
# fresh process.
busy=$(grep -A1 -E "^[a-z_:]+ +FAILED" "$work/pjdfstest.log" \
  | awk '/FAILED/ {name=$1} /mount point is busy/ {print name}' | sort -u)
others=$(grep -E "^[a-z_:]+ +FAILED" "$work/pjdfstest.log" | awk '{print $1}' | sort -u \
  | comm -23 - <(printf '%s\n' "$busy" | sed '/^$/d'))
if [ "$status" -ne 0 ] && [ -n "$busy" ] && [ -z "$others" ]; then
  echo "posix: $(echo "$busy" | wc -l) erofs tests could not remount (the fd leaked by open::einval_invalid_combination); again in a fresh process:"
  # Each name is a pattern (a substring of test names).
  # shellcheck disable=SC2086
  if (cd "$mnt/pjdfstest" && PATH="$shim:$PATH" pjdfstest -c "$config" \
    -p "$mnt/pjdfstest" -s "$work/secondary" $busy) >"$work/pjdfstest-rerun.log" 2>&1; then
    status=0
  fi
  grep -E "FAILED" "$work/pjdfstest-rerun.log" | sed 's/^/posix:   /' || true
  grep "^Summary:" "$work/pjdfstest-rerun.log" | sed 's/^/posix: pjdfstest (rerun) /'
fi
if [ "$status" -ne 0 ]; then
  echo "posix: pjdfstest failed; its log:" >&2
  grep -B2 -A12 FAILED "$work/pjdfstest.log" >&2 || tail -40 "$work/pjdfstest.log" >&2
fi

mkdir "$mnt/fsx"
# fsx 0.3.2 never unmaps what its mapread maps: about one operation in five
# leaks a mapping, and past vm.max_map_count (65,530 by default, reached
# near operation 330,000) mmap fails with ENOMEM. Long runs need room.
map_count_needed=$((fsx_ops / 4 + 10000))
if [ "$(cat /proc/sys/vm/max_map_count)" -lt "$map_count_needed" ]; then
  sysctl -q -w vm.max_map_count="$map_count_needed" \
    || echo "posix: cannot raise vm.max_map_count to $map_count_needed: fsx may stop with ENOMEM" >&2
fi
echo "posix: fsx, $fsx_ops operations, seed $fsx_seed"
if (cd "$mnt/fsx" && fsx -q -N "$fsx_ops" -S "$fsx_seed" testfile) >"$work/fsx.log" 2>&1; then
  echo "posix: fsx $(tail -1 "$work/fsx.log")"
else
  status=1
  echo "posix: fsx failed:" >&2
  tail -40 "$work/fsx.log" >&2
fi
exit "$status"
