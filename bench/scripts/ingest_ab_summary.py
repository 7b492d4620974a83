#!/usr/bin/env python3
"""Medians of an A/B run of bench/scripts/ingest_ab.sh (OUT directory).
Usage: bench/scripts/ingest_ab_summary.py [OUT]"""
import glob, json, os, statistics, sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/ingest-ab"


def runs(name, v):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, f"{name}.{v}.*.json")))]


def fmt(xs, spec):
    return " / ".join(format(x, spec) for x in xs)


print("| scenario | build | records/s (runs) | median | p99 ms (runs) | p99 median | server CPU ns/record (runs) | median |")
print("|---|---|---|---|---|---|---|---|")
for name in ["grpc-vm-closed", "grpc-vm-200k", "http-llm-100k"]:
    med = {}
    for v in ["base", "new"]:
        rs = runs(name, v)
        if not rs:
            continue
        rate = [r["records_per_second"] for r in rs]
        p99 = [r["latency_ms"]["p99"] for r in rs]
        cpu = [r.get("server_cpu_ns_per_record") or float("nan") for r in rs]
        med[v] = (statistics.median(rate), statistics.median(p99), statistics.median(cpu))
        print(f"| {name} | {v} | {fmt(rate, ',.0f')} | **{med[v][0]:,.0f}** | {fmt(p99, '.2f')} | "
              f"**{med[v][1]:.2f}** | {fmt(cpu, ',.0f')} | **{med[v][2]:,.0f}** |")
    if len(med) == 2:
        b, n = med["base"], med["new"]
        print(f"| | new/base | | {n[0] / b[0]:.2f} | | {n[1] / b[1]:.2f} | | {n[2] / b[2]:.2f} |")

print()
print("| core NATS, 300,000/s offered | build | stored/s (runs) | median | lost (runs) | tally CPU ns per stored event (runs) | median |")
print("|---|---|---|---|---|---|---|")
med = {}
for v in ["base", "new"]:
    rs = runs("nats-core-300k", v)
    if not rs:
        continue
    stored = [r["stored_per_second"] for r in rs]
    lost = [r["lost"] for r in rs]
    cpu = [r["cpu_seconds"]["tally"] * 1e9 / max(r["stored_total"], 1) for r in rs]
    med[v] = (statistics.median(stored), statistics.median(cpu))
    print(f"| | {v} | {fmt(stored, ',.0f')} | **{med[v][0]:,.0f}** | {fmt(lost, ',')} | {fmt(cpu, ',.0f')} | **{med[v][1]:,.0f}** |")
if len(med) == 2:
    print(f"| | new/base | | {med['new'][0] / med['base'][0]:.2f} | | | {med['new'][1] / med['base'][1]:.2f} |")
