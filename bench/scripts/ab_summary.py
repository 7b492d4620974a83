#!/usr/bin/env python3
"""Medians of an A/B run of bench/scripts/checksum_ab.sh (OUT directory):
ingest throughput, p99 and server CPU per record, the history reads, and
the scrub. Usage: bench/scripts/ab_summary.py [OUT]"""
import glob, json, os, re, statistics, sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/checksum-ab"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def runs(pattern):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, pattern)))]


def jsonl(path):
    """The JSON objects of a history.sh output (pretty-printed or one a line)."""
    # (bc prints 0.13 as .13.)
    text = re.sub(r":\s*\.(\d)", r": 0.\1", open(path).read())
    objs, dec, i = [], json.JSONDecoder(), 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        o, i = dec.raw_decode(text, i)
        objs.append(o)
    return objs


print("## ingest (open loop), medians of 3")
print("| scenario | build | records/s | p99 ms (runs) | p99 median | CPU ns/record median |")
print("|---|---|---|---|---|---|")
for sc in ["grpc-vm", "http-llm"]:
    base = None
    for v in ["base", "new"]:
        rs = runs(f"{sc}.{v}.*.json")
        p99 = [r["latency_ms"]["p99"] for r in rs]
        rate = med([r["records_per_second"] for r in rs])
        cpu = med([r.get("server_cpu_ns_per_record") or float("nan") for r in rs])
        print(f"| {sc} | {v} | {rate:,.0f} | {' / '.join(f'{x:.2f}' for x in p99)} | {med(p99):.2f} | {cpu:,.0f} |")
        if v == "base":
            base = (rate, med(p99), cpu)
        else:
            print(f"| | new/base | {rate / base[0]:.3f} | | {med(p99) / base[1]:.2f} | {cpu / base[2]:.3f} |")

print()
print("## history reads, medians of 3 runs (each run: p50 of 20 requests)")
print("| query | build | p50 ms (runs) | p50 median | first request ms (median) |")
print("|---|---|---|---|---|")
for kind in ["vm", "llm"]:
    per = {}
    for v in ["base", "new"]:
        for f in sorted(glob.glob(os.path.join(out, f"history-{kind}.{v}.*.jsonl"))):
            for o in jsonl(f):
                for t in o.get("timings", []) if isinstance(o, dict) else []:
                    per.setdefault((t["query"], v), []).append((t["p50_ms"], t.get("first_ms", float("nan"))))
    for q in sorted({q for q, _ in per}):
        b = per.get((q, "base"), [])
        for v in ["base", "new"]:
            xs = per.get((q, v), [])
            p50 = [x for x, _ in xs]
            first = [y for _, y in xs]
            print(f"| `{q[:70]}` | {v} | {' / '.join(f'{x:.1f}' for x in p50)} | {med(p50):.1f} | {med(first):.1f} |")
        n = [x for x, _ in per.get((q, "new"), [])]
        if b and n:
            print(f"| | new/base | | {med(n) / med([x for x, _ in b]):.3f} | |")

print()
print("## scrub")
for name in ["scrub.json"]:
    p = os.path.join(out, name)
    if os.path.exists(p):
        print(open(p).read().strip())
pat = re.compile(r"files=(\d+) bytes=(\d+) damaged=(\d+) unverified=(\d+) seconds=([\d.]+)")
for name in ["scrub-passes.log", "scrub-passes-50mb.log"]:
    p = os.path.join(out, name)
    if not os.path.exists(p):
        continue
    rates = []
    for line in open(p):
        m = pat.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            files, b, dmg, unv, s = m.groups()
            rates.append((int(files), int(b), float(s), int(b) / float(s) / 1e6 if float(s) > 0 else 0))
    if rates:
        print(f"{name}: {len(rates)} passes; files {rates[0][0]}, bytes {rates[0][1]:,}; "
              f"MB/s median {med([r[3] for r in rates]):.1f}; seconds median {med([r[2] for r in rates]):.2f}")
print()
print("| grpc-vm 200,000/s | p99 ms (runs) | p99 median | CPU ns/record median |")
print("|---|---|---|---|")
for s in ["off", "on"]:
    rs = runs(f"scrub-ingest.{s}.*.json")
    p99 = [r["latency_ms"]["p99"] for r in rs]
    cpu = med([r.get("server_cpu_ns_per_record") or float("nan") for r in rs])
    print(f"| scrub {s} | {' / '.join(f'{x:.2f}' for x in p99)} | {med(p99):.2f} | {cpu:,.0f} |")
