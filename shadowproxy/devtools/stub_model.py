"""A small Open Inference Protocol (v2 REST) model server, for trying shadowproxy locally.

It scores each input row with a fixed logistic model, so answers are deterministic and two
servers with slightly different weights disagree a little, as a production model and a
retrained candidate would. It is a development aid, not a model server to deploy.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from aiohttp import web


def score_rows(
    rows: Sequence[Sequence[float]], weights: Sequence[float], bias: float
) -> list[float]:
    """Positive-class probability of each row under a logistic model."""
    scores = []
    for row in rows:
        z = bias + sum(w * x for w, x in zip(weights, row, strict=False))
        scores.append(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))
    return scores


def _rows(body: object) -> list[list[float]]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise ValueError("expected {'inputs': [{name, shape, datatype, data}]}")
    tensor = body["inputs"][0]
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not isinstance(data, list) or not 1 <= len(shape) <= 2:
        raise ValueError("input needs a 1-D or 2-D shape and flat data")
    width = shape[1] if len(shape) == 2 else 1
    if shape[0] * width != len(data):
        raise ValueError("shape does not match the number of values")
    return [[float(v) for v in data[i * width : (i + 1) * width]] for i in range(shape[0])]


def build_app(name: str, version: str, weights: Sequence[float], bias: float) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        try:
            rows = _rows(await request.json())
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        scores = score_rows(rows, weights, bias)
        return web.json_response(
            {
                "model_name": name,
                "model_version": version,
                "outputs": [
                    {
                        "name": "probabilities",
                        "shape": [len(rows), 2],
                        "datatype": "FP32",
                        "data": [v for s in scores for v in (1.0 - s, s)],
                    },
                    {
                        "name": "label",
                        "shape": [len(rows)],
                        "datatype": "INT64",
                        "data": [int(s >= 0.5) for s in scores],
                    },
                ],
            }
        )

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"name": name, "versions": [version], "platform": "stub"})

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/live", ready)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{model}", metadata)
    app.router.add_get("/", ready)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stub v2 model server for local trials")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="model")
    parser.add_argument("--version", default="1")
    parser.add_argument("--weights", default="0.8,-0.5,0.3", help="comma-separated")
    parser.add_argument("--bias", type=float, default=0.0)
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    app = build_app(args.name, args.version, weights, args.bias)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
