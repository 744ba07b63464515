"""The admin listener: health, readiness, metrics and the admin API (aiohttp).

It runs on its own port so probes and scrapes never queue behind client traffic, and it is
never reachable from the traffic listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shadowproxy.compare.comparator import Comparator, truth_labels
from shadowproxy.config import redacted_config
from shadowproxy.config.model import Config
from shadowproxy.observability.metrics import Metrics
from shadowproxy.observability.models import ModelCatalog

ReadinessCheck = Callable[[], list[str]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


def build_admin_app(
    config: Config,
    metrics: Metrics,
    not_ready: ReadinessCheck,
    catalog: ModelCatalog | None = None,
    comparator: Comparator | None = None,
) -> web.Application:
    """The admin routes. ``not_ready`` returns the reasons readiness fails (empty = ready)."""

    async def live(_: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(_: web.Request) -> web.Response:
        reasons = not_ready()
        metrics.ready.set(0 if reasons else 1)
        if reasons:
            return _json({"ready": False, "reasons": reasons}, status=503)
        return _json({"ready": True})

    async def metrics_text(_: web.Request) -> web.Response:
        # The comparator's state collector takes the comparator's lock: off the event loop.
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config_view(_: web.Request) -> web.Response:
        return _json(redacted_config(config))

    async def models(_: web.Request) -> web.Response:
        return _json({"models": [] if catalog is None else catalog.describe_all()})

    async def snapshot(_: web.Request) -> web.Response:
        if comparator is None:
            return _json({"error": "no comparator"}, status=404)
        # Serialising the state takes the comparator's lock: off the event loop.
        state = await asyncio.to_thread(comparator.snapshot)
        return web.Response(body=orjson.dumps(state), content_type="application/json")

    async def feedback(request: web.Request) -> web.Response:
        if comparator is None:
            return _json({"error": "no comparator"}, status=404)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json({"error": "body: not JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            return _json({"error": "request_id: required, a string"}, status=400)
        if "label" not in body:
            return _json({"error": "label: required"}, status=400)
        try:
            truth_labels(body["label"])  # checked here too, to answer 400 before any work
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        joined = await asyncio.to_thread(comparator.feedback, body["request_id"], body["label"])
        if not joined:
            return _json(
                {"joined": False, "reason": "request id unknown or outside the window"},
                status=404,
            )
        return _json({"joined": True}, status=202)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/healthz/live", live)
    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/admin/config", config_view)
    app.router.add_get("/admin/models", models)
    app.router.add_get("/admin/snapshot", snapshot)
    app.router.add_post("/admin/feedback", feedback)
    return app
