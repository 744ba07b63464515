"""``make run``: start stub production and candidate model servers, then serve a config.

The stub servers listen on the ports of ``production.url`` and each remote candidate's
``url`` in the config, so ``configs/local-dev.yaml`` works as it is. Everything started
here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from shadowproxy.config import load_config

# Production and each candidate get slightly different weights, so they disagree a little.
_WEIGHTS = ["0.8,-0.5,0.3", "0.82,-0.48,0.3", "0.5,-0.9,0.6", "0.8,-0.5,0.31"]


@contextlib.contextmanager
def stub_servers(urls: Sequence[tuple[str, str, str]]) -> Iterator[None]:
    """Run one stub model server per ``(url, name, version)``; stop them all afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, (url, name, version) in enumerate(urls):
            parts = urlsplit(url)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "shadowproxy.devtools.stub_model",
                        "--host",
                        parts.hostname or "127.0.0.1",
                        "--port",
                        str(parts.port or 80),
                        "--name",
                        name,
                        "--version",
                        version,
                        "--weights",
                        _WEIGHTS[i % len(_WEIGHTS)],
                    ]  # fmt: skip
                )
            )
        for url, _, _ in urls:
            _wait_for(url.rstrip("/") + "/v2/health/ready")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise SystemExit(f"stub model server at {url} did not start")


def send_traffic(config_path: Path, requests: int, seed: int = 0) -> None:
    """Send ``requests`` v2 inference calls through the proxy, then print what it counted."""
    import json
    import random

    config = load_config(config_path)
    base = f"http://{config.listen.host}:{config.listen.port}"
    admin = f"http://{config.admin.host}:{config.admin.port}"
    _wait_for(admin + "/healthz/ready")
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    for _ in range(requests):
        row = [round(rng.gauss(0, 1), 4) for _ in range(3)]
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": row}]}
        req = urllib.request.Request(
            base + "/v2/models/churn/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    print(f"sent {requests} requests through {base}: statuses {statuses}")
    for line in metrics.splitlines():
        if line.startswith(("shadowproxy_requests_total", "shadowproxy_pairs_total")) and not (
            line.endswith(" 0.0")
        ):
            print("  " + line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument(
        "--traffic", type=int, default=0, help="send this many requests, then stop (0: serve)"
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    urls = []
    if config.production.url:
        urls.append((config.production.url, config.production.name, config.production.version))
    urls += [(c.url, c.name, c.version) for c in config.candidates if c.url]
    with stub_servers(urls):
        serve = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "serve", "--config", str(args.config)]
        )
        try:
            if args.traffic:
                send_traffic(args.config, args.traffic)
                serve.terminate()
            return serve.wait()
        except KeyboardInterrupt:
            serve.terminate()
            return serve.wait(30)
        finally:
            if serve.poll() is None:
                serve.kill()


if __name__ == "__main__":
    raise SystemExit(main())
