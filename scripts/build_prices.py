#!/usr/bin/env python3
"""Builds tally's price catalogue from several LiteLLM releases.

Usage:
  scripts/build_prices.py CURRENT.json > queries/prices/llm_model_prices.json

CURRENT.json is today's catalogue (LiteLLM's model_prices_and_context_window.json
filtered by scripts/filter_prices.py, or the catalogue already in the tree).

Today's LiteLLM map has dropped models that logs are full of
(claude-sonnet-4-20250514, claude-3-5-sonnet-20241022, ...). Older LiteLLM
releases on PyPI (MIT) carry them in their wheel's
model_prices_and_context_window_backup.json. This script downloads the
releases in RELEASES with pip (no dependencies), filters each map like
filter_prices.py, and merges them from the oldest to the newest and then
CURRENT.json: a newer price wins, and a model missing from newer maps keeps
its last known price. The models kept from older releases are listed on
standard error.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile

# Oldest first. Add a newer release to the end to refresh.
RELEASES = ["1.55.0", "1.72.0", "1.77.0"]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from filter_prices import keep  # noqa: E402


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


def main():
    current = json.load(open(sys.argv[1]))
    merged = {}
    origin = {}
    with tempfile.TemporaryDirectory() as tmp:
        for version in RELEASES:
            for model, prices in keep(release_map(version, tmp)).items():
                merged[model] = prices
                origin[model] = version
    for model, prices in current.items():
        merged[model] = prices
        origin[model] = "current"
    kept = sorted(m for m, o in origin.items() if o != "current")
    print(f"{len(kept)} models priced from older releases only:", file=sys.stderr)
    for m in kept:
        print(f"  {m} (litellm {origin[m]})", file=sys.stderr)
    json.dump(merged, sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
