#!/usr/bin/env python3
"""Writes tally's price catalogue from LiteLLM's model price map.

Usage: scripts/filter_prices.py model_prices_and_context_window.json > queries/prices/llm_model_prices.json

Keeps the models that are priced per token (chat, completion, responses)
and, of each, only the four prices tally uses and the provider.
"""
import json
import sys

KEEP = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_creation_input_token_cost",
    "cache_read_input_token_cost",
)



def keep(src):
    """The per-token models of a LiteLLM map, with their four prices."""
    out = {}
    for name, entry in sorted(src.items()):
        if not isinstance(entry, dict) or name == "sample_spec":
            continue
        if entry.get("mode") not in ("chat", "completion", "responses"):
            continue
        prices = {k: entry[k] for k in KEEP if isinstance(entry.get(k), (int, float))}
        if "input_cost_per_token" not in prices or "output_cost_per_token" not in prices:
            continue
        if entry.get("litellm_provider"):
            prices["litellm_provider"] = entry["litellm_provider"]
        out[name] = prices
    return out


if __name__ == "__main__":
    json.dump(keep(json.load(open(sys.argv[1]))), sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")
