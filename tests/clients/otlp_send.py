"""Sends OTLP records with OpenTelemetry's own Python SDK and exporters, as
tests/otlp.rs asks: log records shaped as Claude Code's and Codex's, and
GenAI spans.

Usage: otlp_send.py PROTOCOL ENDPOINT TOKEN FILE
  PROTOCOL: grpc | http-protobuf | http-json
  FILE: JSON {"logs": [...], "spans": [...], "metrics": [...]} where a log is
    {"service": str, "body": str|null, "time_ns": int|null,
     "attributes": {...}} and a span is
    {"service": str, "name": str, "trace_id": int, "span_id": int,
     "start_ns": int, "end_ns": int, "attributes": {...}}
  and a metric is {"name": str, "kind": "counter"|"histogram",
     "temporality": "cumulative"|"delta", "runs": [[[value, {attrs}], ...], ...]}:
     each run is one MeterProvider (a new start time: a counter reset for a
     cumulative stream), exported after every value.
"""

import json
import sys

from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator


def metric_exporter(protocol, endpoint, token, temporality):
    from opentelemetry.sdk.metrics import Counter, Histogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    t = AggregationTemporality.CUMULATIVE if temporality == "cumulative" else AggregationTemporality.DELTA
    kw = {"headers": {"authorization": f"Bearer {token}"},
          "preferred_temporality": {Counter: t, Histogram: t}}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=endpoint.replace("http://", ""), insecure=True, **kw)
    if protocol == "http-protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", **kw)
    from opentelemetry.exporter.otlp.json.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", **kw)


def send_metrics(protocol, endpoint, token, metrics):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    for m in metrics:
        for run in m["runs"]:
            reader = PeriodicExportingMetricReader(
                metric_exporter(protocol, endpoint, token, m["temporality"]),
                export_interval_millis=3_600_000,
            )
            provider = MeterProvider(
                metric_readers=[reader],
                resource=Resource.create({"service.name": "claude-code"}),
            )
            meter = provider.get_meter("tally-test")
            if m["kind"] == "counter":
                inst = meter.create_counter(m["name"], unit="tokens")
                record = inst.add
            else:
                inst = meter.create_histogram(m["name"], unit="ms")
                record = inst.record
            for value, attrs in run:
                record(value, attrs)
                reader.collect()
            provider.shutdown()


def exporters(protocol, endpoint, token):
    headers = {"authorization": f"Bearer {token}"}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target = endpoint.replace("http://", "")
        return (
            OTLPLogExporter(endpoint=target, insecure=True, headers=headers),
            OTLPSpanExporter(endpoint=target, insecure=True, headers=headers),
        )
    if protocol == "http-protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return (
            OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers),
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers),
        )
    if protocol == "http-json":
        from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

        return (
            OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers),
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers),
        )
    raise SystemExit(f"unknown protocol {protocol}")


class FixedIds(IdGenerator):
    """The span's ids from the file, so that a second send is a resend."""

    def __init__(self):
        self.next = None

    def generate_span_id(self):
        return self.next[1]

    def generate_trace_id(self):
        return self.next[0]


def main():
    protocol, endpoint, token, path = sys.argv[1:5]
    spec = json.load(open(path))
    log_exporter, span_exporter = exporters(protocol, endpoint, token)

    by_service = {}
    for rec in spec.get("logs", []):
        by_service.setdefault(rec["service"], []).append(rec)
    for service, recs in by_service.items():
        provider = LoggerProvider(
            resource=Resource.create({"service.name": service, "service.version": "1.0.0"})
        )
        provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
        logger = provider.get_logger(service)
        for rec in recs:
            logger.emit(
                LogRecord(
                    timestamp=rec.get("time_ns"),
                    observed_timestamp=rec.get("observed_ns"),
                    severity_number=SeverityNumber.INFO,
                    body=rec.get("body"),
                    attributes=rec["attributes"],
                )
            )
        provider.force_flush()

    ids = FixedIds()
    spans = spec.get("spans", [])
    if spans:
        provider = TracerProvider(
            resource=Resource.create({"service.name": spans[0]["service"]}), id_generator=ids
        )
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        tracer = provider.get_tracer("genai-app")
        for s in spans:
            ids.next = (s["trace_id"], s["span_id"])
            span = tracer.start_span(
                s["name"],
                context=trace_api.set_span_in_context(trace_api.INVALID_SPAN),
                kind=trace_api.SpanKind.CLIENT,
                start_time=s["start_ns"],
                attributes=s["attributes"],
            )
            span.end(end_time=s["end_ns"])
        provider.force_flush()
    send_metrics(protocol, endpoint, token, spec.get("metrics", []))
    print("sent", protocol, len(spec.get("logs", [])), "logs", len(spans), "spans")


if __name__ == "__main__":
    main()
