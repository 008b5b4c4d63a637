#!/usr/bin/env bash
# Tears down what gluster-up.sh made: unmounts, stops and deletes the volume,
# stops glusterd if gluster-up.sh started it, removes the bricks.
#   usage: gluster-down.sh VOLUME DIR
set -uo pipefail
vol=${1:?usage: gluster-down.sh VOLUME DIR}
dir=${2:?usage: gluster-down.sh VOLUME DIR}

if mountpoint -q "$dir/mnt" 2>/dev/null; then
  umount "$dir/mnt" 2>/dev/null || umount -l "$dir/mnt"
fi
if command -v gluster >/dev/null && gluster --mode=script volume info "$vol" >/dev/null 2>&1; then
  gluster --mode=script volume stop "$vol" force >/dev/null 2>&1
  gluster --mode=script volume delete "$vol" >/dev/null 2>&1
fi
if [ -f "$dir/glusterd.started" ] && [ -f "$dir/glusterd.pid" ]; then
  pid=$(cat "$dir/glusterd.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/glusterd.started" "$dir/glusterd.pid"
fi
rm -rf "$dir/bricks"
echo "gluster-down: $vol removed"
