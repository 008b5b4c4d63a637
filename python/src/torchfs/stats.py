"""Reading the client's cache counters from ``<mount>/.torchfs/stats``."""

import json
import os
from typing import Any, Dict

from .plan import CONTROL_DIR


def stats(mount: str) -> Dict[str, Any]:
    """One consistent snapshot of the mount's epoch-cache counters (JSON
    format 1: reads, hits, hit_ratio, misses, stalls, stall_seconds,
    storage_read_bytes, tiers.memory/disk, prefetch, plans[...]). Counters
    grow from mount time: subtract two snapshots to measure an epoch."""
    with open(os.path.join(mount, CONTROL_DIR, "stats"), "rb") as f:
        return json.loads(f.read())


def delta(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """``after - before`` for the counters (numbers, recursively); gauges
    such as cached_bytes come out as differences too."""
    out: Dict[str, Any] = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, dict) and isinstance(b, dict):
            out[k] = delta(b, v)
        elif isinstance(v, (int, float)) and isinstance(b, (int, float)) and not isinstance(v, bool):
            out[k] = v - b
        else:
            out[k] = v
    return out
