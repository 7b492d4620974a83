#!/usr/bin/env python3
"""Builds tally's price catalogue from several LiteLLM releases, with dates.

Usage:
  scripts/build_prices.py > queries/prices/llm_model_prices.json

Today's LiteLLM map has dropped models that logs are full of
(claude-sonnet-4-20250514, claude-3-5-sonnet-20241022, ...), and prices
change over time. Each LiteLLM release on PyPI (MIT) carries the map of its
day in its wheel's model_prices_and_context_window_backup.json. This script
downloads the releases in RELEASES with pip (no dependencies), filters each
map like filter_prices.py, and merges them from the oldest to the newest:

- a model takes the price of the newest release that lists it, so a model
  dropped later keeps its last known price;
- where a release changed a price the model had in an earlier release, the
  earlier price is kept in the model's "tally_earlier_prices" list with
  "until": the PyPI upload time of the release that changed it (tally
  prices a call made before that instant at the earlier price);
- a price an earlier release did not give (a cache price LiteLLM had not
  recorded yet) is not a change: the earlier entry takes the later value.

To refresh, add the newest release to the end of RELEASES and run it again.
The models kept from older releases only and the changed prices are listed
on standard error.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

# Oldest first. Add a newer release to the end to refresh.
RELEASES = ["1.55.0", "1.72.0", "1.77.0", "1.109.1"]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from filter_prices import KEEP, keep  # noqa: E402


def upload_times():
    """The PyPI upload time of each release in RELEASES (RFC 3339, UTC)."""
    with urllib.request.urlopen("https://pypi.org/pypi/litellm/json", timeout=60) as r:
        releases = json.load(r)["releases"]
    out = {}
    for version in RELEASES:
        times = sorted(f["upload_time_iso_8601"] for f in releases[version])
        # Seconds are enough; "2025-06-01T02:12:50.458217Z" -> "...:50Z".
        out[version] = times[0].split(".")[0].rstrip("Z") + "Z"
    return out


def release_map(version, into):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         f"litellm=={version}", "-d", into],
        check=True,
    )
    wheel = glob.glob(os.path.join(into, f"litellm-{version}-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist()
                    if n.endswith("model_prices_and_context_window_backup.json"))
        return json.loads(z.read(name))


def prices_of(entry):
    return {k: entry[k] for k in KEEP if k in entry}


def merge(maps, since):
    """maps: (version, filtered map) oldest first; since: version -> time."""
    merged = {}
    history = {}  # model -> [(since, prices)], one entry per distinct price
    for version, m in maps:
        for model, entry in m.items():
            merged[model] = entry
            prices = prices_of(entry)
            seen = history.setdefault(model, [])
            if not seen:
                seen.append((since[version], prices))
                continue
            last = seen[-1][1]
            changed = any(k in last and k in prices and last[k] != prices[k] for k in KEEP)
            if changed:
                seen.append((since[version], prices))
            else:
                # Same price, perhaps with a field recorded for the first time.
                seen[-1] = (seen[-1][0], {**last, **prices})
    out = {}
    for model, entry in merged.items():
        seen = history[model]
        entry = dict(entry)
        earlier = []
        for (_, prices), (until, later) in zip(seen, seen[1:]):
            # Fill fields the earlier release lacked from the later one.
            earlier.append({"until": until, **{**later, **prices}})
        if earlier:
            entry["tally_earlier_prices"] = earlier
        out[model] = entry
    return out


def main():
    since = upload_times()
    maps = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in RELEASES:
            maps.append((version, keep(release_map(version, tmp))))
    out = merge(maps, since)
    newest = maps[-1][1]
    kept = sorted(m for m in out if m not in newest)
    print(f"{len(kept)} models priced from older releases only:", file=sys.stderr)
    for m in kept:
        print(f"  {m}", file=sys.stderr)
    dated = sorted(m for m, e in out.items() if "tally_earlier_prices" in e)
    print(f"{len(dated)} models with dated earlier prices", file=sys.stderr)
    json.dump(out, sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
