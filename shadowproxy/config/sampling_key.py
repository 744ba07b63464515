"""The sampling key: the one secret a config names by file, read once at start.

:mod:`shadowproxy.shadow.sampling` keeps the decisions pure; this is the I/O that gives
them their key. ``validate`` and ``serve`` both read it through here, so a missing, short or
oversized file is one message naming ``sampling.key_file``, and never shows the key.
"""

from __future__ import annotations

from pathlib import Path

from shadowproxy.errors import ConfigError, Problem

MIN_KEY_BYTES = 16
MAX_KEY_FILE_BYTES = 4096
KEY_SETTING = "sampling.key_file"


def read_sampling_key(path: Path) -> bytes:
    """The secret held in ``path``, surrounding whitespace removed.

    Raises
    ------
    ConfigError
        Naming ``sampling.key_file``: the file cannot be read, is larger than
        ``MAX_KEY_FILE_BYTES``, or holds fewer than ``MIN_KEY_BYTES`` bytes.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([Problem(KEY_SETTING, f"cannot read {path}: {reason}")]) from exc
    key = raw.strip()
    if len(raw) > MAX_KEY_FILE_BYTES:
        problem = f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file"
    elif len(key) < MIN_KEY_BYTES:
        problem = f"{path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}"
    else:
        return key
    raise ConfigError([Problem(KEY_SETTING, problem)])
