#!/usr/bin/env bash
# Brings up the GlusterFS peer for torchfs-perf: a disperse 4+2 volume on 6
# bricks on this host, FUSE-mounted, the same shape as torchfs's k=4 m=2.
#   usage: gluster-up.sh VOLUME DIR
# Bricks go in DIR/bricks/b1..b6, the mount at DIR/mnt. glusterd is started
# unless one runs already (DIR/glusterd.started records that we started it,
# so gluster-down.sh stops only what we started). Prints the mount point.
# Needs root and `apt-get install -y glusterfs-server glusterfs-client`.
set -euo pipefail
vol=${1:?usage: gluster-up.sh VOLUME DIR}
dir=${2:?usage: gluster-up.sh VOLUME DIR}
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "gluster-up: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root"
command -v glusterd >/dev/null || fail "glusterd not installed (apt-get install -y glusterfs-server glusterfs-client)"
command -v mount.glusterfs >/dev/null || fail "mount.glusterfs not installed (apt-get install -y glusterfs-client)"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

# Leftovers of an earlier run that died.
"$here/gluster-down.sh" "$vol" "$dir" >/dev/null 2>&1 || true

mkdir -p "$dir/mnt" "$dir/log"
if ! pgrep -x glusterd >/dev/null; then
  glusterd -p "$dir/glusterd.pid" --log-file="$dir/log/glusterd.log"
  touch "$dir/glusterd.started"
fi
# glusterd takes about 2 s to answer.
for _ in $(seq 1 50); do
  gluster --mode=script volume list >/dev/null 2>&1 && break
  sleep 0.2
done
gluster --mode=script volume list >/dev/null 2>&1 || fail "glusterd does not answer (see $dir/log/glusterd.log)"

host=$(hostname)   # the CLI refuses 127.0.0.1/localhost as a brick host
bricks=()
for i in 1 2 3 4 5 6; do
  mkdir -p "$dir/bricks/b$i"
  bricks+=("$host:$dir/bricks/b$i")
done
# All bricks on one server: `force` (gluster warns this is not redundant).
gluster --mode=script volume create "$vol" disperse 6 redundancy 2 "${bricks[@]}" force >/dev/null
gluster --mode=script volume start "$vol" >/dev/null
for _ in $(seq 1 25); do
  mount -t glusterfs "127.0.0.1:/$vol" "$dir/mnt" 2>/dev/null && break
  sleep 0.2
done
mountpoint -q "$dir/mnt" || fail "mount -t glusterfs 127.0.0.1:/$vol $dir/mnt failed"
echo "$dir/mnt"
