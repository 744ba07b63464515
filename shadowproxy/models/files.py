"""Read model files once, within a byte budget, without following what could be swapped.

Every file is opened once and read from that one descriptor: the bytes that are hashed are
the bytes that are parsed and handed to onnxruntime, so replacing the file between the check
and the load (time-of-check to time-of-use) changes nothing. ``fstat`` on the open
descriptor, not ``stat`` on the name, decides whether it is a regular file.

``O_NONBLOCK`` keeps a FIFO from blocking the open until a writer appears; it is refused as
not a regular file right after. On regular files the flag has no effect.
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath, PureWindowsPath

__all__ = [
    "FileRefused",
    "TooLarge",
    "read_capped",
    "open_model_file",
    "open_inside",
    "split_location",
]

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class FileRefused(Exception):
    """A file cannot be read safely; the message is the reason, without the file name."""


class TooLarge(FileRefused):
    """A file holds more bytes than its budget allows."""


def _require_regular(fd: int, hard_links_ok: bool) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused("is not a regular file")
    if not hard_links_ok and info.st_nlink > 1:
        raise FileRefused(
            f"is a hard link ({info.st_nlink} names for one file), which could alias a file "
            "outside the model's folder"
        )
    return info


def read_capped(fd: int, limit: int) -> bytes:
    """Read the whole file behind ``fd``, refusing it if it holds more than ``limit`` bytes.

    Reads ``limit + 1`` bytes at most, so a file that grows while it is read, or a size that
    ``fstat`` under-reports, cannot make the read unbounded.
    """
    if limit < 0:
        raise TooLarge("is over the size limit")
    info = os.fstat(fd)
    if info.st_size > limit:
        raise TooLarge(f"is {info.st_size} bytes, over the limit of {limit}")
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise TooLarge(f"is over the limit of {limit} bytes")
    return data


def open_model_file(path: str) -> int:
    """Open an already resolved model path read-only, refusing anything but a regular file."""
    try:
        fd = os.open(path, _READ_FLAGS | _NOFOLLOW)
    except FileNotFoundError as exc:
        raise FileRefused("does not exist") from exc
    except OSError as exc:
        raise FileRefused(f"cannot be opened ({exc.strerror})") from exc
    try:
        _require_regular(fd, hard_links_ok=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def split_location(location: str) -> tuple[str, ...]:
    """The parts of an external-data location, refusing anything that could leave the folder."""
    if not location:
        raise FileRefused("has an empty location")
    if "\x00" in location:
        raise FileRefused("has a NUL byte in its location")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
        raise FileRefused("is an absolute path")
    if location.startswith(("/", "\\")) or PureWindowsPath(location).drive:
        raise FileRefused("is an absolute path")
    parts = tuple(p for p in location.replace("\\", "/").split("/") if p not in ("", "."))
    if ".." in parts:
        raise FileRefused("contains '..'")
    if not parts:
        raise FileRefused("does not name a file")
    return parts


def open_inside(folder: str, parts: tuple[str, ...]) -> int:
    """Open ``folder/parts...`` one component at a time, following no symlink at any level.

    Each component is opened relative to the descriptor of its parent with ``O_NOFOLLOW``, so
    a symlinked directory or file anywhere on the way is refused even if it is swapped in
    after any earlier check; with ``..`` already refused, the file cannot be outside
    ``folder``. Hard links are refused too: a hard link is another name for a file that may
    live anywhere on the same filesystem.
    """
    _explain_escape(folder, parts)
    dir_fd = os.open(folder, os.O_RDONLY | _DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise FileRefused("does not exist") from exc
            except OSError as exc:
                raise FileRefused(f"passes through {part!r}, not a plain folder") from exc
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            fd = os.open(parts[-1], _READ_FLAGS | _NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise FileRefused("does not exist") from exc
        except OSError as exc:
            raise FileRefused(f"cannot be opened ({exc.strerror})") from exc
    finally:
        os.close(dir_fd)
    try:
        _require_regular(fd, hard_links_ok=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _explain_escape(folder: str, parts: tuple[str, ...]) -> None:
    """Name the reason a location is unsafe before opening it, for a clearer message.

    Only an explanation: :func:`open_inside` enforces the same rules on the descriptors.
    """
    path = os.path.join(folder, *parts)
    if os.path.islink(path):
        raise FileRefused("is a symlink")
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise FileRefused("resolves outside the model's folder")
