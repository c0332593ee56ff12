"""gRPC server spans of the inference service name the adapter version that answered."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from perennial import tracing
from tests.services.inference.conftest import publish


def test_model_infer_span_carries_the_served_version(start_service, learner) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = start_service(tracing=tracing.server_interceptors(True, provider)).ready()
    manifest = publish(service.store, learner)
    service.infer()
    [span] = [s for s in exporter.get_finished_spans() if s.name.endswith("/ModelInfer")]
    assert span.name == "/inference.GRPCInferenceService/ModelInfer"
    assert span.attributes["perennial.adapter"] == "demo"
    assert span.attributes["perennial.version"] == manifest.version
    assert span.attributes["rpc.system"] == "grpc"
