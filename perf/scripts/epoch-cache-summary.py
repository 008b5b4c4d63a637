#!/usr/bin/env python3
"""Summarizes an epoch_cache run (`<out>/epoch_cache.json` from torchfs-perf):
the mean of epochs 2+ per (case, cache, mode), with samples/s against the
no-plan mode on the same dataset version and the local disk's samples/s over
this row's. Prints a Markdown table (the README's).

    perf/scripts/epoch-cache-summary.py perf-out/epoch_cache.json
"""
import json
import sys
from collections import OrderedDict


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(path):
    with open(path) as f:
        rows = json.load(f)
    groups = OrderedDict()
    for r in rows:
        if r["epoch"] < 2:
            continue
        key = (r["case"], r["cache_pct"], r["mode"])
        groups.setdefault(key, []).append(r)
    summary = OrderedDict()
    for key, rs in groups.items():
        summary[key] = {
            k: mean([r[k] for r in rs])
            for k in ["samples_per_s", "hit_ratio", "no_stall_pct", "stall_s",
                      "trainer_wait_s", "storage_mb", "metad_per_sample"]
        }
    labels = {
        "Plan": "torchfs, plans",
        "NoPlan": "torchfs, no plan",
        "FrozenPlan": "torchfs frozen, plans",
        "FrozenNoPlan": "torchfs frozen, no plan",
        "Local": "local disk",
    }
    no_plan_of = {"Plan": "NoPlan", "NoPlan": "NoPlan",
                  "FrozenPlan": "FrozenNoPlan", "FrozenNoPlan": "FrozenNoPlan"}
    print("| case | cache | mode | samples/s | vs no plan | local / this | hit ratio "
          "| reads without stall | client stall s | trainer wait s | storage MB | metad/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def fmt(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    for (case, pct, mode), s in summary.items():
        local = next((v["samples_per_s"] for (c, _, m), v in summary.items()
                      if c == case and m == "Local"), None)
        base = summary.get((case, pct, no_plan_of.get(mode, "")))
        vs = (f"{s['samples_per_s'] / base['samples_per_s']:.2f}x"
              if base and mode != "Local" else "-")
        lt = f"{local / s['samples_per_s']:.2f}" if local else "-"
        nostall = "-" if s["no_stall_pct"] is None else f"{s['no_stall_pct']:.1f}%"
        print(f"| {case} | {'-' if mode == 'Local' else str(pct) + '%'} | {labels[mode]} "
              f"| {s['samples_per_s']:.0f} | {vs} | {lt} | {fmt(s['hit_ratio'], 3)} | {nostall} "
              f"| {fmt(s['stall_s'], 2)} | {fmt(s['trainer_wait_s'], 1)} | {fmt(s['storage_mb'], 0)} "
              f"| {fmt(s['metad_per_sample'], 2)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
