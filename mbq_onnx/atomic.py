"""Atomic directory writes: build in a temporary directory beside the target, then rename it into place."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replace_directory(output: Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``output``; on success it replaces ``output`` (an existing
    ``output`` is moved aside, then removed), on error it is removed and ``output`` is left untouched."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if output.exists():
            old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def replace_file(path: Path) -> Iterator[Path]:
    """Yield a temp file path beside ``path`` (same suffix) to write; on success it is renamed onto ``path``
    (mode 0644), on error removed and ``path`` left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`replace_file`)."""
    with replace_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
