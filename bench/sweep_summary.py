#!/usr/bin/env python3
"""Summarises a `GpuLossBench --sweep` log (bench/gpu-session.sh sweep writes $OUT/sweep.txt) as a
markdown table for bench/RESULTS.md: per C, the planned launch, the best variant of each regime
(and cluster size for clusters and pipes), and the best overall, in GB/s and % of the same run's
device-to-device copy.

    python3 bench/sweep_summary.py sweep.txt
"""
import re
import sys

PLANNED = re.compile(r"^loss C=(\d+): ([\d.]+) GB/s, ([\d.]+)% of copy \(([\d.]+) GB/s\), ([\d.]+) ms \[(.*)\]")
COUNTED = re.compile(r"^loss C=(\d+), normalizer counted in the launch: ([\d.]+) GB/s, ([\d.]+)% of copy")
VARIANT = re.compile(r"^\s+variant C=(\d+) (\w+) cl=(\d+) blocks=(\d+) threads=(\d+) staged=(\d+)/(\d+): ([\d.]+) GB/s, ([\d.]+)% of copy, ([\d.]+) ms")


def main(path):
    planned, counted, variants = {}, {}, {}
    with open(path) as f:
        for line in f:
            m = PLANNED.match(line)
            if m:
                planned[int(m[1])] = (float(m[2]), float(m[3]), m[6])
                continue
            m = COUNTED.match(line)
            if m:
                counted[int(m[1])] = (float(m[2]), float(m[3]))
                continue
            m = VARIANT.match(line)
            if m:
                c, regime, cl = int(m[1]), m[2], int(m[3])
                what = f"{regime}" + (f" x{cl}" if regime in ("cluster", "pipe") else "")
                shape = f"{m[4]} blocks x {m[5]} threads, staged {m[6]}/{m[7]}"
                variants.setdefault(c, []).append((float(m[8]), float(m[9]), what, shape))
    if not planned:
        sys.exit(f"{path}: no 'loss C=' lines (is it GpuLossBench output?)")
    print("| C | planned | GB/s | % of copy | counted normalizer | best variant | GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|")
    for c in sorted(planned):
        gbs, pct, plan = planned[c]
        regime = re.search(r"regime=(\w+)", plan)
        cnt = counted.get(c)
        best = max(variants.get(c, []), default=None)
        print(f"| {c:,} | {regime[1] if regime else plan} | {gbs:,.1f} | {pct:.1f}% | "
              + (f"{cnt[0]:,.1f} ({cnt[1]:.1f}%)" if cnt else "-") + " | "
              + (f"{best[2]}, {best[3]} | {best[0]:,.1f} | {best[1]:.1f}% |" if best else "- | - | - |"))
    for c in sorted(variants):
        print(f"\nC = {c:,}: best of each regime")
        print("| variant | launch | GB/s | % of copy |")
        print("|---|---|---|---|")
        best = {}
        for v in variants[c]:
            if v[2] not in best or v[0] > best[v[2]][0]:
                best[v[2]] = v
        for gbs, pct, what, shape in sorted(best.values(), reverse=True):
            print(f"| {what} | {shape} | {gbs:,.1f} | {pct:.1f}% |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
