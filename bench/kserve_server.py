"""The KServe side of `make bench-serving`: KServe's Python model server (PyPI `kserve` 0.21,
run from its own virtual environment .venv-kserve) serving the same PyTorch module as Perennial
(MiniLM + the LAE LoRA ensemble, loaded from the same safetensors snapshot) through the same
Open Inference Protocol v2 gRPC API.

    .venv-kserve/bin/python bench/kserve_server.py --snapshot FILE --model NAME --grpc_port P --http_port Q

The model is written as KServe documents custom models: `load()` then a synchronous
`predict(InferRequest) -> InferResponse`; KServe has no dynamic batching in its Python server.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

import kserve  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402

from perennial.backbone import TextBackbone  # noqa: E402
from perennial.learners import load_predictor  # noqa: E402


class LAEModel(kserve.Model):
    """A KServe model serving one Perennial snapshot, as a KServe user would write it."""

    def __init__(self, name: str, snapshot: Path) -> None:
        super().__init__(name)
        self.snapshot = snapshot
        self.load()

    def load(self) -> bool:
        blob = self.snapshot.read_bytes()
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + size]).get("__metadata__", {})
        # as perennial.store.from_safetensors (not importable here: that module needs redis)
        metadata = json.loads(header["perennial"]) if "perennial" in header else header
        self.backbone = TextBackbone.load()
        self.predictor = load_predictor(self.backbone, load_safetensors(blob), metadata)
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        texts = [item.decode("utf-8") for item in payload.inputs[0].as_numpy().ravel()]
        with torch.inference_mode():
            scores = self.predictor.scores(self.backbone, texts).numpy()
        labels = np.array(
            [self.predictor.classes[i].encode() for i in scores.argmax(-1)], dtype=np.object_
        )
        probabilities = InferOutput("probabilities", list(scores.shape), "FP32")
        probabilities.set_data_from_numpy(scores)
        label = InferOutput("label", [len(labels)], "BYTES")
        label.set_data_from_numpy(labels)
        return InferResponse(
            response_id=payload.id, model_name=self.name, infer_outputs=[probabilities, label]
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--torch_threads", type=int, default=0)
    args, _ = parser.parse_known_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    model = LAEModel(args.model, args.snapshot)
    kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=True,
        enable_latency_logging=False,
    ).start([model])


if __name__ == "__main__":
    main()
