"""Which HTTP server for the REST transport: the candidates on the same stand-in handler.

    make bench-rest-servers    # = a venv .venv-rest with bench/requirements-rest-servers.txt, then
    .venv-rest/bin/python bench/rest_servers.py --out bench/rest-servers-results.json

Each candidate serves `POST /v2/models/m/infer` in a process of its own. The handler does what
the inference service's REST handler does around the model: parse the JSON body, call a
blocking function on a worker thread (the shared operation, which waits for the batch thread),
and answer JSON. The "model" is a batch thread that answers at once, so what is measured is the
server, the thread hop and the JSON, not a model. Load: closed loop over keep-alive
connections (`http.client`), concurrency 1 and 8, after a warm-up. Writes a results JSON,
which `make bench-protocols` renders into docs/BENCHMARKS.md ("Which HTTP server").
"""

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a small dog"]}]}
).encode()
CANDIDATES = ("aiohttp", "uvicorn-starlette", "uvicorn-fastapi", "granian-starlette", "cheroot")


# -- the stand-in for the shared operation: a batch thread completes futures -------------------
_jobs: queue.SimpleQueue = queue.SimpleQueue()


def _batch_thread() -> None:
    while True:
        future, rows = _jobs.get()
        future.set_result([len(row) for row in rows])


def operation(body: bytes) -> bytes:
    request = json.loads(body)
    future: Future = Future()
    _jobs.put((future, request["inputs"][0]["data"]))
    scores = future.result(timeout=10)
    return json.dumps(
        {
            "model_name": "m",
            "outputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": scores}],
        }
    ).encode()


# -- the candidates ------------------------------------------------------------------------------
def serve(name: str, port: int) -> None:
    if name not in ("uvicorn-starlette", "granian-starlette"):
        threading.Thread(target=_batch_thread, daemon=True).start()
    if name == "aiohttp":
        from aiohttp import web

        pool = ThreadPoolExecutor(64)

        async def infer(request: web.Request) -> web.Response:
            body = await request.read()
            reply = await asyncio.get_running_loop().run_in_executor(pool, operation, body)
            return web.Response(body=reply, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", infer)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    elif name in ("uvicorn-starlette", "granian-starlette"):
        _starlette_app(port, name.split("-")[0])
    elif name == "uvicorn-fastapi":
        import uvicorn
        from fastapi import FastAPI, Request, Response
        from starlette.concurrency import run_in_threadpool

        app = FastAPI()

        @app.post("/v2/models/{name}/infer")
        async def infer(name: str, request: Request) -> Response:
            reply = await run_in_threadpool(operation, await request.body())
            return Response(reply, media_type="application/json")

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    elif name == "cheroot":
        from cheroot import wsgi

        def app(environ, start_response):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            reply = operation(environ["wsgi.input"].read(length))
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(reply)))])  # fmt: skip
            return [reply]

        wsgi.Server(("127.0.0.1", port), app, numthreads=64).safe_start()


def starlette_app():
    """The Starlette candidate's app (a factory: granian imports it by name in its worker)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    threading.Thread(target=_batch_thread, daemon=True).start()

    async def infer(request: Request) -> Response:
        reply = await run_in_threadpool(operation, await request.body())
        return Response(reply, media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])


def _starlette_app(port: int, runner: str) -> None:
    if runner == "uvicorn":
        import uvicorn

        uvicorn.run(
            starlette_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    else:
        from granian import Granian

        Granian("bench.rest_servers:starlette_app", address="127.0.0.1", port=port,
                interface="asgi", workers=1, factory=True, log_enabled=False).serve()  # fmt: skip


# -- the load ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(port: int, concurrency: int, requests: int, warmup: int = 100) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        for n in range(warmup + per_thread):
            started = time.perf_counter()
            connection.request(
                "POST", "/v2/models/m/infer", BODY, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200, response.status
            response.read()
            if n >= warmup:
                mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {"concurrency": concurrency, "requests": len(latencies),
            "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3),
            "throughput_rps": round(concurrency * (warmup + per_thread) / elapsed, 1)}  # fmt: skip


def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not listen within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=CANDIDATES)
    parser.add_argument("--port", type=int)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/rest-servers-results.json"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    results = []
    for repeat in range(args.repeats):
        for name in CANDIDATES:
            port = _free_port()
            process = subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(port)],
                                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})  # fmt: skip
            try:
                _wait_listening(port)
                for concurrency in (1, 8):
                    point = {
                        "server": name,
                        "repeat": repeat,
                        **load(port, concurrency, args.requests),
                    }
                    print(json.dumps(point), flush=True)
                    results.append(point)
            finally:
                process.terminate()
                process.wait(timeout=10)
    versions = {}
    for package in (
        "aiohttp",
        "uvicorn",
        "starlette",
        "fastapi",
        "granian",
        "cheroot",
        "httptools",
        "uvloop",
    ):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    args.out.write_text(json.dumps({
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "versions": versions, "requests_per_point": args.requests, "results": results,
    }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
