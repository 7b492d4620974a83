#!/usr/bin/env python3
"""Writes a Claude Code log tree for benchmarks: DIR/<project>/<session>.jsonl.

Usage: scripts/gen_claude_logs.py DIR FILES LINES_PER_FILE

Each session alternates user lines and assistant lines with usage (half the
lines are model calls), over the 30 days before now, with Claude Code's
field names. Deterministic (seeded).
"""
import datetime
import json
import os
import random
import sys

root, files, per_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
now = datetime.datetime.now(datetime.timezone.utc)
models = ["claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-20241022"]
for f in range(files):
    project = f"-home-dev-project-{f % 20}"
    os.makedirs(os.path.join(root, project), exist_ok=True)
    session = f"session-{f:05d}"
    start = now - datetime.timedelta(days=30) + datetime.timedelta(minutes=f * 7)
    with open(os.path.join(root, project, f"{session}.jsonl"), "w") as out:
        for i in range(per_file):
            t = (start + datetime.timedelta(seconds=i * 5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            common = {"parentUuid": f"p{i}", "isSidechain": False, "userType": "external",
                      "cwd": f"/home/dev/project-{f % 20}", "sessionId": session,
                      "version": "1.0.80", "gitBranch": "main", "uuid": f"{session}-{i}",
                      "timestamp": t}
            if i % 2 == 0:
                line = dict(common, type="user",
                            message={"role": "user", "content": "please change the function " * 4})
            else:
                line = dict(common, type="assistant", requestId=f"req_{session}_{i}",
                            message={"id": f"msg_{session}_{i}", "type": "message", "role": "assistant",
                                     "model": models[rng.randrange(3)],
                                     "content": [{"type": "text", "text": "Done. " * 20}],
                                     "stop_reason": "end_turn",
                                     "usage": {"input_tokens": rng.randrange(1, 5000),
                                               "cache_creation_input_tokens": rng.randrange(0, 8000),
                                               "cache_read_input_tokens": rng.randrange(0, 60000),
                                               "output_tokens": rng.randrange(1, 3000),
                                               "service_tier": "standard"}})
            out.write(json.dumps(line) + "\n")
