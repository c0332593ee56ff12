"""Ask the model over HTTP/REST with plain JSON (Open Inference Protocol; docs/QUICKSTART.md, step 2).

The same service, operations and batcher as gRPC; only the Python standard library here, so
this is what curl would send too.
Run: python examples/query_rest.py --url http://127.0.0.1:8000 "a puppy chewing a bone"
"""

from __future__ import annotations

import argparse
import json
import urllib.request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="REST base URL")
    parser.add_argument("--adapter", default="quickstart", help="model name = adapter id")
    args = parser.parse_args(argv)

    body = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(args.texts)], "data": args.texts}
        ],
        "outputs": [{"name": "label"}, {"name": "probabilities"}],
    }
    request = urllib.request.Request(
        f"{args.url}/v2/models/{args.adapter}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    outputs = {output["name"]: output for output in answer["outputs"]}
    parameters = answer.get("parameters", {})
    ids = parameters["prediction_id"].split(",") if "prediction_id" in parameters else []
    classes = outputs["probabilities"]["shape"][1]
    scores = outputs["probabilities"]["data"]
    for row, label in enumerate(outputs["label"]["data"]):
        line = {
            "text": args.texts[row],
            "label": label,
            "score": round(max(scores[row * classes : (row + 1) * classes]), 4),
            "version": answer["model_version"],
            "prediction_id": ids[row] if ids else None,
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
