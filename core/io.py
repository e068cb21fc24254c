"""Atomic file and folder writes, content hashes, and PNGs that carry their parameters.

Written by hand because no library in the stack offers an atomic directory swap; each
write goes to a temp sibling and is renamed into place, so a crash never leaves a
half-written file that looks complete.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from PIL import Image, PngImagePlugin


# OS-level write failures that the user fixes outside the program (free space, remount, rights).
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO,
                errno.EFBIG}
# Libraries that write from native code (safetensors' Rust writer) raise their own exception
# types with the OS message inside; these phrases identify the same failures there.
_WRITE_PHRASES = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                  "Disk quota exceeded": errno.EDQUOT, "code: 28,": errno.ENOSPC, "code: 30,": errno.EROFS}


def write_error(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """`exc` (or an exception it wraps) as an OSError naming `path` when it is an OS-level write
    failure such as a full disk or a read-only file system; None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return OSError(exc.errno, os.strerror(exc.errno), exc.filename or (str(path) if path else None))
        text = str(exc)
        for phrase, code in _WRITE_PHRASES.items():
            if phrase in text:
                return OSError(code, os.strerror(code), str(path) if path else None)
        exc = exc.__cause__ or exc.__context__
    return None


def describe_write_error(exc: BaseException) -> str | None:
    """One line for a write failure ('cannot write PATH: No space left on device'), else None."""
    err = write_error(exc)
    if err is None:
        return None
    return f"cannot write {err.filename or 'to the workspace'}: {err.strerror}"


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Re-raise a write failure inside the block as an OSError naming `path` (for writers, such
    as safetensors, whose errors do not say which file)."""
    try:
        yield
    except BaseException as e:
        err = write_error(e, path)
        if err is not None and not (isinstance(e, OSError) and e.filename):
            raise err from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: object) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `path` whole (old copy removed after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with naming_path(path):
            yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def upsert_csv(path: str | Path, header: list[str], body: str, key: str = "file") -> Path:
    """Add CSV rows (`body`: lines without a header, as `to_csv(header=False)` writes them) to the
    table at `path`, replacing every row whose `key` is already listed: a table never lists a file
    twice, not even when two processes add rows at once (read, merge and replace run under an
    exclusive lock on a sidecar file; the table is replaced atomically). Rows kept keep their
    bytes, which stage hashes read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
        head = lines[0] if lines else ",".join(header) + "\n"
        column = next(csv.reader([head])).index(key)
        added: dict[str, str] = {}
        for line in body.splitlines(keepends=True):
            added[_cell(line, column)] = line if line.endswith("\n") else line + "\n"
        kept = [line if line.endswith("\n") else line + "\n" for line in lines[1:]
                if _cell(line, column) not in added]
        return atomic_write_text(path, head + "".join(kept) + "".join(added.values()))
    finally:
        os.close(fd)


def _cell(line: str, column: int) -> str | None:
    try:
        return next(csv.reader([line]))[column]
    except (IndexError, StopIteration, csv.Error):
        return None         # a torn line: kept as it is, its file named by no one


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a single write call, so readers never see half a record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        end = f.tell()
        try:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
        except OSError:
            f.truncate(end)     # a torn line would swallow the next record appended after it
            raise


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_hash(path: str | Path, pattern: str = "*.safetensors") -> str:
    """Short hash of a model folder's weight files (identifies the model in manifests)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob(pattern)):
        st = p.stat()
        h.update(p.name.encode())
        h.update(_weights_sha256(str(p.resolve()), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=256)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Stage checks and manifest filters ask for the same model hashes many times per run (the
    # paper UNet is 1.2 GB); a file rewritten in place gets a new (size, mtime) and is hashed again.
    return file_sha256(path)


def save_png(image: Image.Image, path: str | Path, params: dict) -> Path:
    """Save a PNG with `params` in a text chunk ("parameters", JSON) — A1111-style provenance."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(params, sort_keys=True, default=str))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with naming_path(path):
            image.save(tmp, format="PNG", pnginfo=info)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def read_png_params(path: str | Path) -> dict:
    with Image.open(path) as im:
        raw = im.info.get("parameters") or (getattr(im, "text", {}) or {}).get("parameters")
    return json.loads(raw) if raw else {}
