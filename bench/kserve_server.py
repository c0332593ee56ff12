"""The KServe side of `make bench-serving`: KServe's Python model server (PyPI `kserve` 0.21, run
from its own virtual environment .venv-kserve) around the SAME predict function as Perennial's
inference service: `services.inference.model.load_version` builds the adapter's head version
from the Redis snapshot store and `services.inference.model.predict` scores each request's
batch — one code path, one backbone runtime (`--runtime`), one thread count.

    .venv-kserve/bin/python bench/kserve_server.py --redis-url URL --model NAME \
        --runtime onnx --threads 1 --grpc_port P --http_port Q

The model is written as KServe documents custom models: `load()` then a synchronous
`predict(InferRequest) -> InferResponse`; KServe's Python server has no dynamic batching, so
each request is one call of `predict` with its own rows.
"""

from __future__ import annotations

import argparse

import kserve
import numpy as np
import redis
import torch
from kserve import InferOutput, InferRequest, InferResponse

from perennial.backbone import TextBackbone
from perennial.store import SnapshotStore
from services.inference.model import load_version, predict


class PerennialModel(kserve.Model):
    """One Perennial adapter's head version, served by KServe with Perennial's predict."""

    def __init__(self, name: str, redis_url: str, runtime: str, threads: int) -> None:
        super().__init__(name)
        self.redis_url, self.runtime, self.threads = redis_url, runtime, threads
        self.load()

    def load(self) -> bool:
        store = SnapshotStore(redis.Redis.from_url(self.redis_url))
        head = store.head(self.name)
        if head is None:
            raise SystemExit(f"no head version of {self.name!r} in {self.redis_url}")
        manifest, blob = store.fetch(self.name, head.version)
        self.backbone = TextBackbone.load()
        self.backbone.use_runtime(self.runtime, None, self.threads)
        self.served = load_version(self.backbone, manifest, blob)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        texts = [item.decode("utf-8") for item in payload.inputs[0].as_numpy().ravel()]
        [scores] = predict(self.backbone, [(self.served, texts)])
        scores = scores.numpy()
        classes = self.served.classes
        labels = np.array([classes[i].encode() for i in scores.argmax(-1)], dtype=np.object_)
        probabilities = InferOutput("probabilities", list(scores.shape), "FP32")
        probabilities.set_data_from_numpy(scores)
        label = InferOutput("label", [len(labels)], "BYTES")
        label.set_data_from_numpy(labels)
        return InferResponse(
            response_id=payload.id, model_name=self.name, infer_outputs=[probabilities, label]
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--model", required=True, help="the adapter id (= model name)")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx", "onnx-int8"))
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    args, _ = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    model = PerennialModel(args.model, args.redis_url, args.runtime, args.threads)
    kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=True,
        enable_latency_logging=False,
    ).start([model])


if __name__ == "__main__":
    main()
