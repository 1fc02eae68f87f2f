"""Side files of a model folder (tokenizer.json, tokenizer_config.json, generation_config.json,
chat_template.jinja, config.json): found by name, read only from inside the folder.

A model folder is user input like the model itself. A side file that is a symlink resolving outside the
folder (`chat_template.jinja -> /etc/passwd`) would otherwise be read, and copied into the artifact;
a FIFO or a device would block the reader; a multi-gigabyte file would be read whole. Each of these is
a one-line TccError naming the file. Symlinks that stay inside the folder are followed, and so are the
Hugging Face hub cache's (`snapshots/<rev>/tokenizer.json -> ../../blobs/<sha>`).
"""
from __future__ import annotations

import os
import stat

from ..errors import TccError

__all__ = ["MAX_BYTES", "check_file", "read_bytes", "read_side_text", "read_text", "side_file"]

_MiB = 1 << 20
# Largest accepted size per file name: the biggest real tokenizer.json files are ~35 MB (Gemma);
# configs and templates are kilobytes. Other files (a text to score) may have up to OTHER_MAX_BYTES.
MAX_BYTES = {"tokenizer.json": 256 * _MiB, "chat_template.jinja": 4 * _MiB, "tokenizer_config.json": 16 * _MiB,
             "generation_config.json": 16 * _MiB, "config.json": 16 * _MiB}
OTHER_MAX_BYTES = 1 << 30

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def limit_for(path: str) -> int:
    return MAX_BYTES.get(os.path.basename(path), OTHER_MAX_BYTES)


def _allowed_roots(folder: str) -> list[str]:
    """Where a side file of `folder` may resolve to: the folder, and for a hub cache snapshot
    (<repo>/snapshots/<rev>) its <repo>/blobs."""
    real = os.path.realpath(folder)
    roots = [real]
    snapshots, _rev = os.path.split(real)
    repo, name = os.path.split(snapshots)
    if name == "snapshots":
        roots.append(os.path.join(repo, "blobs"))
    return roots


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def check_file(path: str, max_bytes: int | None = None, label: str | None = None) -> os.stat_result:
    """Stat `path` (following symlinks) and refuse what is not a regular file of at most `max_bytes`
    (default: the limit for its name), without opening it (a FIFO would block the open)."""
    label = label or path
    limit = limit_for(path) if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except FileNotFoundError:
        what = "a symlink to a missing file" if os.path.islink(path) else "file not found"
        raise TccError(f"{label}: {what}") from None
    except OSError as e:
        raise TccError(f"{label}: cannot read: {e.strerror or e}") from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise TccError(f"{label}: not a regular file ({kind})")
    if not stat.S_ISREG(st.st_mode):
        raise TccError(f"{label}: not a regular file")
    if st.st_size > limit:
        raise TccError(f"{label}: {st.st_size} bytes, more than the limit of {limit} bytes for this file")
    return st


def side_file(folder: str, name: str, max_bytes: int | None = None) -> str | None:
    """The path of side file `name` in `folder`, or None if there is none. Raises TccError naming the
    file when it resolves outside the folder, is not a regular file, or is over its size limit."""
    assert name and os.sep not in name and name not in (".", ".."), name  # names are tcc's constants
    path = os.path.join(folder, name)
    if not os.path.lexists(path):
        return None
    real = os.path.realpath(path)
    if not any(_inside(real, root) for root in _allowed_roots(folder)):
        raise TccError(f"{path}: resolves to {real}, outside the model folder {os.path.abspath(folder)} "
                       f"(a side file must be inside it; copy the file there instead of linking it)")
    check_file(path, max_bytes)
    return path


def read_bytes(path: str, max_bytes: int | None = None, label: str | None = None) -> bytes:
    """The contents of a regular file of at most `max_bytes` (checked before opening, and again while
    reading, in case it grew)."""
    label = label or path
    limit = limit_for(path) if max_bytes is None else max_bytes
    check_file(path, limit, label)
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the check, open does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TccError(f"{label}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise TccError(f"{label}: more than the limit of {limit} bytes for this file")
    return data


def read_text(path: str, max_bytes: int | None = None, label: str | None = None) -> str:
    """A UTF-8 text file (see read_bytes)."""
    data = read_bytes(path, max_bytes, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TccError(f"{label or path}: not UTF-8 text (byte offset {e.start})") from None


def read_side_text(folder: str, name: str, max_bytes: int | None = None) -> str | None:
    """The text of side file `name` in `folder` (None if there is none), checked as side_file does."""
    path = side_file(folder, name, max_bytes)
    return None if path is None else read_text(path, max_bytes)
