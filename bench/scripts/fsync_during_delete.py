#!/usr/bin/env python3
"""How deleting large files delays another file's fdatasync, without tally.

A thread appends 30 KB to a file and fdatasyncs it, over and over, as the
WAL writer does; meanwhile six 64 MiB files are deleted one by one, either
with one unlink each or cut from the end in steps (each cut fdatasync'd and
followed by a pause) and then unlinked, as tally removes WAL segments.

Usage: bench/scripts/fsync_during_delete.py DIR [unlink|steps|none] [STEP_MIB] [PAUSE_MS]
Prints how many fsyncs took over 5 and 10 ms, and their p50, p99 and max.
"""
import os
import sys
import threading
import time

d = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "unlink"
step = int(sys.argv[3] if len(sys.argv) > 3 else 4) << 20
pause = float(sys.argv[4] if len(sys.argv) > 4 else 5) / 1000


def make(i):
    path = os.path.join(d, f"segment{i}")
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    return path


def delete(path):
    if mode == "unlink":
        os.unlink(path)
    elif mode == "steps":
        fd = os.open(path, os.O_WRONLY)
        size = os.fstat(fd).st_size
        while size > 0:
            size = max(0, size - step)
            os.ftruncate(fd, size)
            os.fdatasync(fd)
            time.sleep(pause)
        os.close(fd)
        os.unlink(path)


latencies, stop = [], threading.Event()


def appender():
    fd = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    while not stop.is_set():
        os.write(fd, b"x" * 30000)
        t = time.perf_counter()
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - t)
    os.close(fd)


files = [make(i) for i in range(6)]
thread = threading.Thread(target=appender)
thread.start()
time.sleep(0.5)
for path in files:
    delete(path)
    time.sleep(0.7)
stop.set()
thread.join()
if mode == "none":
    for path in files:
        os.unlink(path)
os.unlink(os.path.join(d, "log"))
lat = sorted(latencies)
n = len(lat)
print(
    f"{mode}: {n} fsyncs, over 5 ms {sum(x > 0.005 for x in lat)}, over 10 ms {sum(x > 0.01 for x in lat)}, "
    f"p50 {lat[n // 2] * 1e3:.2f} ms, p99 {lat[int(n * 0.99)] * 1e3:.2f} ms, max {lat[-1] * 1e3:.1f} ms"
)
