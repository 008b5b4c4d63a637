#!/usr/bin/env bash
# Tears down what juicefs-up.sh made: unmounts, stops its redis-server,
# removes the bucket, cache and database.
#   usage: juicefs-down.sh DIR
set -uo pipefail
dir=${1:?usage: juicefs-down.sh DIR}

if mountpoint -q "$dir/mnt" 2>/dev/null; then
  juicefs umount "$dir/mnt" >/dev/null 2>&1 || umount -l "$dir/mnt"
fi
if [ -f "$dir/redis.pid" ]; then
  pid=$(cat "$dir/redis.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/redis.pid"
fi
rm -rf "$dir/bucket" "$dir/cache" "$dir/redis"
echo "juicefs-down: removed"
