"""The inference service: the Open Inference Protocol over gRPC, hot-swapping adapters."""
