"""Ask the model over gRPC with tritonclient (Open Inference Protocol; docs/QUICKSTART.md, step 2).

Prints one JSON line per text: the label, the version that answered and, when the prediction
log is on, the prediction id to send feedback about.
Run: python examples/query_grpc.py --url 127.0.0.1:8001 "a puppy chewing a bone"
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tritonclient.grpc as triton


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address of inference")
    parser.add_argument("--adapter", default="quickstart", help="model_name = adapter id")
    args = parser.parse_args(argv)

    client = triton.InferenceServerClient(args.url)
    text = triton.InferInput("text", [len(args.texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in args.texts], dtype=np.object_))
    result = client.infer(args.adapter, [text])
    answer = result.get_response()
    parameters = answer.parameters
    ids = (
        parameters["prediction_id"].string_param.split(",") if "prediction_id" in parameters else []
    )
    classes = [c.decode() for c in result.as_numpy("classes")]
    for row, (label, scores) in enumerate(
        zip(result.as_numpy("label"), result.as_numpy("probabilities"), strict=True)
    ):
        line = {
            "text": args.texts[row],
            "label": label.decode(),
            "score": round(float(scores.max()), 4),
            "version": answer.model_version,
            "prediction_id": ids[row] if ids else None,
            "classes": classes,
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
