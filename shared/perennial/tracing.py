"""OpenTelemetry traces, off unless an OTLP endpoint is configured.

`configure(service, endpoint)` installs a tracer provider that batches spans to an OTLP/gRPC
collector; without an endpoint nothing is installed and every tracer is OpenTelemetry's
no-op. gRPC servers get the instrumentation's server interceptor (`server_interceptors`).
Kafka records carry the W3C trace context (`traceparent`, `tracestate`) in their headers when
the producer sends it: `inject_headers` writes them, `extract_link` reads them back as a span
link (a micro-batch has many parents, so examples are linked, not parented).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import grpc
from opentelemetry import context, propagate, trace

log = logging.getLogger(__name__)
TRACER = "perennial"
HEADERS = ("traceparent", "tracestate")


def configure(service: str, endpoint: str, sample_ratio: float = 1.0) -> bool:
    """Export spans of `service` to the OTLP/gRPC `endpoint`; False (and nothing done) if empty."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        )
    )
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"fields": {"service": service, "endpoint": endpoint}})
    return True


def shutdown() -> None:
    """Flush the spans still buffered (at process exit); nothing when tracing is off."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    return trace.get_tracer(TRACER, tracer_provider=provider)


def server_interceptors(
    enabled: bool, provider: trace.TracerProvider | None = None
) -> list[grpc.ServerInterceptor]:
    """The gRPC server span interceptor when tracing is on (one span per RPC), else none."""
    if not enabled:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=provider)]


def inject_headers(headers: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """Kafka record headers carrying the current span's context (for producers)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [*(headers or []), *((k, v.encode()) for k, v in carrier.items())]


def extract_link(headers: Sequence[tuple[str, bytes]] | None) -> trace.Link | None:
    """The producer's span context from a record's headers, as a link; None without one."""
    carrier = {
        key: value.decode("latin-1")
        for key, value in headers or ()
        if key in HEADERS and isinstance(value, bytes | bytearray)
    }
    if "traceparent" not in carrier:
        return None
    span_context = trace.get_current_span(propagate.extract(carrier, context.Context()))
    parent = span_context.get_span_context()
    return trace.Link(parent) if parent.is_valid else None


def links(items: Iterable[trace.Link | None], limit: int = 128) -> list[trace.Link]:
    """Distinct links, at most `limit` (a span keeps 128 links by default)."""
    seen, out = set(), []
    for link in items:
        if link is None:
            continue
        key = (link.context.trace_id, link.context.span_id)
        if key not in seen:
            seen.add(key)
            out.append(link)
        if len(out) >= limit:
            break
    return out
