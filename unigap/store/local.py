"""The local-directory store: the default, used by `unigap loop` on one machine."""

from __future__ import annotations

import os
from pathlib import Path

from unigap.io import atomic_write_bytes
from unigap.store.base import CorruptObjectError, StoreError, object_key, sha256


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
            (self.root / "records").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"store directory {self.root} cannot be created ({e.strerror})") from None
        if not os.access(self.root / "objects", os.W_OK) or not os.access(self.root / "records", os.W_OK):
            raise StoreError(f"store directory {self.root} is not writable")

    def _object_path(self, sha: str) -> Path:
        return self.root / object_key(sha)

    def put_object(self, data: bytes) -> str:
        sha = sha256(data)
        path = self._object_path(sha)
        if not path.exists():
            atomic_write_bytes(path, data)
        return sha

    def get_object(self, sha: str) -> bytes:
        path = self._object_path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(f"object {sha} is not in the store at {self.root}") from None
        if sha256(data) != sha:
            raise CorruptObjectError(sha, str(path))
        return data

    def has_object(self, sha: str) -> bool:
        return self._object_path(sha).exists()

    def delete_object(self, sha: str) -> None:
        self._object_path(sha).unlink(missing_ok=True)

    def put_record(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.root / "records" / key, data)

    def get_record(self, key: str) -> bytes | None:
        try:
            return (self.root / "records" / key).read_bytes()
        except FileNotFoundError:
            return None

    def list_records(self, prefix: str) -> list[str]:
        base = self.root / "records"
        return sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".") and str(p.relative_to(base)).startswith(prefix)
        )
