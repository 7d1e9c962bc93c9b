"""sha256 of a file, streamed; and what tells a changed file from the one last read."""

from __future__ import annotations

import hashlib
from pathlib import Path

_digests: dict[Path, tuple[tuple[int, int, int], str]] = {}  # file -> (its signature when hashed, its sha256)


def file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed file from the one read: its modification time, size and inode (None: unreadable)."""
    try:
        found = path.stat() if path is not None else None
    except OSError:
        return None
    return None if found is None else (found.st_mtime_ns, found.st_size, found.st_ino)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_unless_unchanged(path: Path) -> str:
    """``sha256_file``, read again only if the file changed since this process last hashed it: the store's
    scan hashes a card's weights, and each load checks them again (models.py), the first one at start."""
    seen = file_signature(path)
    known = _digests.get(path)
    if seen is not None and known is not None and known[0] == seen:
        return known[1]
    digest = sha256_file(path)
    if seen is not None:
        _digests[path] = (seen, digest)
    return digest
