"""One host name for several loopback addresses, resolved for real by ``getaddrinfo``.

A headless Service gives one DNS name every replica's address. On a test machine the same
situation is a name listed in ``/etc/hosts`` for several addresses; ``localhost`` often is
(127.0.0.1 and ::1), but not everywhere. So that every machine runs the same test, the
command that resolves the name runs in a private mount namespace where a temporary hosts
file is bind-mounted over ``/etc/hosts``: the system resolver, its files backend and its
IPv4/IPv6 handling are the real ones, and nothing outside the command sees the file.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path


def with_hosts(
    command: Sequence[str], entries: Sequence[tuple[str, str]], folder: Path
) -> list[str]:
    """``command`` wrapped to run with ``entries`` (address, name) as its ``/etc/hosts``.

    As root a mount namespace suffices; otherwise a user namespace maps the caller to root
    inside it.
    """
    hosts = folder / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost\n"
        + "".join(f"{address} {name}\n" for address, name in entries)
    )
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    inner = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec {shlex.join(command)}"
    return [*namespace, "sh", "-c", inner]
