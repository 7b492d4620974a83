#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

Run from the repository root: python3 fuzz/seeds/make_seeds.py
The seeds are small valid inputs of each format (written here from the
formats' definitions), so the fuzzer starts inside every decoder."""
import base64, gzip, json, os, struct, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- protobuf, by hand -------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def vm_metrics(secs, cpu):
    ts = field(1, 0, secs) + field(2, 0, 500)
    return (field(1, 2, ts) + field(2, 0, cpu) + field(3, 0, 1 << 30) + field(4, 0, 10)
            + field(5, 0, 20) + field(6, 0, 30) + field(7, 0, 40))


def batch_proto():
    return (field(1, 2, b"vm-1") + field(2, 2, b"cust-1")
            + field(3, 2, vm_metrics(1767225000, 1000)) + field(3, 2, vm_metrics(1767225015, 2000)))


HEARTBEAT = field(1, 2, b"host-1") + field(2, 2, b"vm-1") + field(2, 2, b"vm-2")
STARTED = field(1, 2, b"vm-1") + field(2, 2, b"cust-1") + field(3, 0, 1767225000000000000)
STOPPED = field(1, 2, b"vm-1") + field(2, 0, 1767225000000000000)
GAP = field(1, 2, b"vm-1") + field(2, 0, 1767225000000000000) + field(3, 0, 1767225300000000000)
PROTOS = [batch_proto(), HEARTBEAT, STARTED, STOPPED, GAP]

BATCH_JSON = json.dumps({
    "vmId": "vm-1", "customerId": "cust-1",
    "metrics": [{"timestamp": "2025-12-31T23:50:00.100Z", "cpuTimeNanos": "1000",
                 "memoryUsageBytes": 1073741824, "diskReadBytes": "10", "diskWriteBytes": 20,
                 "networkRxBytes": 30, "networkTxBytes": 40}]}).encode()
JSONS = [
    BATCH_JSON,
    json.dumps({"instanceId": "host-1", "activeVms": ["vm-1"]}).encode(),
    json.dumps({"vm_id": "vm-1", "customer_id": "cust-1", "start_time": "1767225000000000000"}).encode(),
    json.dumps({"vmId": "vm-1", "stopTime": 1767225000000000000}).encode(),
    json.dumps({"vmId": "vm-1", "lastSent": "1767225000000000000", "resumeTime": "1767225300000000000"}).encode(),
]

# connect_body: selector = method | 0x40 proto | 0x80 gzip
for m in range(5):
    put("connect_body", f"json-{m}", bytes([m]) + JSONS[m])
    put("connect_body", f"proto-{m}", bytes([m | 0x40]) + PROTOS[m])
    put("connect_body", f"json-gzip-{m}", bytes([m | 0x80]) + gzip.compress(JSONS[m]))
    put("connect_body", f"proto-gzip-{m}", bytes([m | 0xC0]) + gzip.compress(PROTOS[m]))

put("gzip_body", "json", gzip.compress(BATCH_JSON))
put("gzip_body", "empty", gzip.compress(b""))
put("gzip_body", "two-members", gzip.compress(b"a") + gzip.compress(b"b"))

# grpc_frames: selector = method | content type << 3 | 0x80 gzip
def frame(msg, compressed=False):
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(msg)) + msg

for m in range(5):
    for t in range(5):
        body = frame(PROTOS[m])
        if t == 4:  # grpc-web-text
            body = base64.b64encode(body)
        put("grpc_frames", f"m{m}-t{t}", bytes([m | (t << 3)]) + body)
    put("grpc_frames", f"m{m}-gzip", bytes([m | 0x80]) + frame(gzip.compress(PROTOS[m]), True))

# event_json: selector = subject | 0x80 NDJSON
EVENTS = [
    {"event_id": "evt-123", "timestamp": "2025-11-24T12:00:00Z", "actor_id": "user:93",
     "actor_type": "human", "agent_id": "agent:sofia", "microdao_id": "microdao:7",
     "model": "gpt-4.1-mini", "provider": "openai", "prompt_tokens": 450, "completion_tokens": 120,
     "total_tokens": 570, "cache_read_tokens": 5, "latency_ms": 1250, "success": True,
     "metadata": {"k": "v"}},
    {"event_id": "t-1", "timestamp": "2025-11-24T12:00:01Z", "actor_id": "user:1", "actor_type": "human",
     "tool_id": "t", "tool_name": "search", "success": False, "latency_ms": 5, "error": "timeout"},
    {"event_id": "a-1", "timestamp": "2025-11-24T12:00:02Z", "agent_id": "agent:1", "trigger": "message",
     "duration_ms": 900, "llm_calls": 2, "tool_calls": 1, "success": True},
    {"channel_id": "c", "message_id": "m", "sender_id": "user:1", "microdao_id": "d",
     "created_at": "2025-11-24T12:03:00Z", "content": "héllo", "thread_id": "t1"},
    {"event_id": "a1b2", "event_ts": "2026-01-12T03:12:34.567890+00:00", "chat_id": "chat_123",
     "app_id": "app_abc", "user_id": "user_456", "workflow_name": "AgentGenerator",
     "agent_name": "PlannerAgent", "model_name": "gpt-4o-mini", "prompt_tokens": 120,
     "completion_tokens": 48, "total_tokens": 168, "cached": False, "duration_sec": 0.82},
    {"event_id": "s-1", "event_ts": "2026-01-12T03:12:35", "chat_id": "chat_123", "app_id": "app_abc",
     "user_id": "user_456", "workflow_name": "AgentGenerator", "prompt_tokens": 1, "completion_tokens": 2},
]
for i, e in enumerate(EVENTS):
    put("event_json", f"object-{i}", bytes([i]) + json.dumps(e).encode())
    put("event_json", f"array-{i}", bytes([i]) + json.dumps([e, e]).encode())
    put("event_json", f"ndjson-{i}", bytes([i | 0x80]) + (json.dumps(e) + "\n" + json.dumps(e) + "\n").encode())

# WAL entry payload (pipeline/src/wal/codec.rs) and segment frames (segment.rs)
STR, I32, I64, F64, BOOL, TS, NULL = 1, 2, 3, 4, 5, 6, 0

def s(v): b = v.encode(); return bytes([STR]) + struct.pack("<I", len(b)) + b
def i32(v): return bytes([I32]) + struct.pack("<i", v)
def i64(v): return bytes([I64]) + struct.pack("<q", v)
def ts(v): return bytes([TS]) + struct.pack("<q", v)
def f64(v): return bytes([F64]) + struct.pack("<d", v)
def boolean(v): return bytes([BOOL, 1 if v else 0])
null = bytes([NULL])

VM_ROW = bytes([5]) + s("cust") + s("vm-1") + ts(1767225000000000000) + b"".join(i64(n) for n in range(6))
REJECTED_ROW = bytes([9]) + ts(1) + s("http") + null + s("usage_llm") + i32(3) + s("reason") + s("{}")
HOST_ROW = bytes([7]) + s("h") + ts(5) + f64(12.5) + f64(0.0) + i64(1) + i64(2) + null + null + null
LLM_ROW = (bytes([0]) + s("evt-1") + ts(1763985600000000000) + null * 4 + s("gpt") + null
           + i32(1) + i32(2) + i32(3) + null + null + i32(10) + boolean(True) + null * 5
           + s("usage.llm") + null)

def entry(rows, from_log=False):
    return bytes([1 | (0x80 if from_log else 0)]) + struct.pack("<I", len(rows)) + b"".join(rows)

ENTRIES = [entry([VM_ROW, REJECTED_ROW]), entry([HOST_ROW], True), entry([LLM_ROW, LLM_ROW])]

def wal_frame(seq, payload):
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return struct.pack("<IIQ", len(payload), crc, seq) + payload

for i, e in enumerate(ENTRIES):
    put("wal_codec", f"entry-{i}", e)
    put("tally_records", f"message-{i}", e)
put("wal_codec", "segment", b"".join(wal_frame(i, e) for i, e in enumerate(ENTRIES)))
put("tally_records", "wrong-type", entry([bytes([0]) + LLM_ROW[1:].replace(i32(1), s("one"), 1)]))

# usage config
put("usage_config", "change", json.dumps({"plan": "max5", "view": "daily", "timezone": "Europe/Berlin",
                                           "refresh_rate": 5, "refresh_per_second": 1.5, "reset_hour": 3}).encode())
put("usage_config", "custom", json.dumps({"plan": "custom", "custom_limit_tokens": 50000}).encode())
put("usage_config", "stored", json.dumps({
    "id": 1, "plan": "custom", "custom_limit_tokens": None, "view": "realtime", "timezone": "auto",
    "time_format": "auto", "theme": "auto", "refresh_rate": 10, "refresh_per_second": 0.75,
    "reset_hour": None, "created_at": 0, "updated_at": 0}).encode())

# Kafka vm.metrics
put("kafka_vm_metrics", "batch", batch_proto())
