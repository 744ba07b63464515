"""nginx configuration rendering for the stub backends and the reference reverse proxies.

Every instance runs in the foreground (``-g 'daemon off;'``) with a private prefix: pid file,
error log and temp dirs all live under a temporary directory, so nothing touches /etc/nginx
or the system service.
"""

from __future__ import annotations

import os
from pathlib import Path

# The body a KServe v2 classifier would answer with; every stub backend returns it. Its two
# outputs have the names and types of the benchmark's ONNX model's, so the comparator of
# ``shadowproxy_both`` compares labels and scores of both kinds of candidate.
STUB_RESPONSE = (
    '{"outputs":[{"name":"label","shape":[1],"datatype":"INT64","data":[1]},'
    '{"name":"probabilities","shape":[1,2],"datatype":"FP32","data":[0.2,0.8]}]}'
)

# Keep-alive connections are never recycled during a run: churn would dominate the figures.
_KEEPALIVE_REQUESTS = 1_000_000

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _preamble(prefix: Path) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        "worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    )


def _http_common(prefix: Path) -> str:
    temps = "".join(f"    {name}_temp_path {prefix / name};\n" for name in TEMP_DIRS)
    return (
        "    access_log off;\n"
        f"{temps}"
        "    default_type application/json;\n"
        f"    keepalive_requests {_KEEPALIVE_REQUESTS};\n"
        "    keepalive_timeout 75s;\n"
        "    tcp_nodelay on;\n"
    )


def render_backend(prefix: Path, port: int, *, with_status: bool = True) -> str:
    """A stub model server answering every request with :data:`STUB_RESPONSE`.

    ``location = /_status`` exposes ``stub_status`` so the harness can count the requests the
    backend received (this is how mirrored requests are counted for nginx's ``mirror``).
    """
    status = "        location = /_status { stub_status; }\n" if with_status else ""
    return (
        _preamble(prefix)
        + "http {\n"
        + _http_common(prefix)
        + "    server {\n"
        + f"        listen 127.0.0.1:{port};\n"
        + status
        + f"        location / {{ return 200 '{STUB_RESPONSE}'; }}\n"
        + "    }\n"
        + "}\n"
    )


def _upstream(name: str, port: int) -> str:
    return (
        f"    upstream {name} {{\n"
        f"        server 127.0.0.1:{port};\n"
        "        keepalive 64;\n"
        f"        keepalive_requests {_KEEPALIVE_REQUESTS};\n"
        "    }\n"
    )


_PROXY_TO_UPSTREAM = (
    '            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'
)


def render_proxy(
    prefix: Path,
    port: int,
    production_port: int,
    candidate_port: int | None = None,
    *,
    candidate_timeout_ms: int = 100,
) -> str:
    """nginx as a reverse proxy with a keep-alive upstream pool.

    With ``candidate_port``, every request is also mirrored (``mirror`` plus
    ``mirror_request_body on``) to the candidate, with the same deadline shadowproxy gives its
    candidate.
    """
    mirror = candidate_port is not None
    out = [_preamble(prefix), "http {\n", _http_common(prefix)]
    out.append(_upstream("production", production_port))
    if candidate_port is not None:
        out.append(_upstream("candidate", candidate_port))
    out.append("    server {\n")
    out.append(f"        listen 127.0.0.1:{port};\n")
    out.append("        location / {\n")
    if mirror:
        out.append("            mirror /_mirror;\n")
        out.append("            mirror_request_body on;\n")
    out.append("            proxy_pass http://production;\n")
    out.append(_PROXY_TO_UPSTREAM)
    out.append("        }\n")
    if mirror:
        t = f"{candidate_timeout_ms}ms"
        out.append("        location = /_mirror {\n")
        out.append("            internal;\n")
        out.append("            proxy_pass http://candidate$request_uri;\n")
        out.append(_PROXY_TO_UPSTREAM)
        out.append(f"            proxy_connect_timeout {t};\n")
        out.append(f"            proxy_send_timeout {t};\n")
        out.append(f"            proxy_read_timeout {t};\n")
        out.append("        }\n")
    out.append("    }\n}\n")
    return "".join(out)


def prepare_prefix(prefix: Path) -> None:
    """Create the temp directories a config rendered for ``prefix`` refers to."""
    prefix.mkdir(parents=True, exist_ok=True)
    for name in TEMP_DIRS:
        (prefix / name).mkdir(exist_ok=True)
