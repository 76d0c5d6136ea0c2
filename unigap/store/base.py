"""The preference store interface: content-addressed objects plus a few named records.

Objects are immutable and addressed by their sha256, so a write is idempotent and a read is
verified. Named records (round manifests) are small JSON documents replaced atomically. Every
backend (local directory here, S3/MinIO alongside) implements these seven methods; everything
else (JSON, arrays, checkpoints, manifests) is built on them in `records.py`. Objects are
deleted only where one record alone ever names them (a trainer's superseded training states).
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class CorruptObjectError(Exception):
    """An object's bytes no longer match its address: it is never used."""

    def __init__(self, sha: str, where: str):
        super().__init__(f"object {sha} at {where} is corrupt (its sha256 does not match); it will not be used")
        self.sha = sha


class StoreError(Exception):
    """The store cannot be used (not writable, unreachable): a clear, user-facing message."""


def is_ref(text: str) -> bool:
    """Whether `text` is an object address (a checkpoint reference is one): 64 lowercase hex digits."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_key(sha: str) -> str:
    """Where an object lives under a store's root, the same in every backend (records live under
    `records/<key>`)."""
    return f"objects/{sha[:2]}/{sha}"


class Store(Protocol):
    def put_object(self, data: bytes) -> str: ...

    def get_object(self, sha: str) -> bytes: ...

    def has_object(self, sha: str) -> bool: ...

    def delete_object(self, sha: str) -> None: ...  # an object already gone is no error

    def put_record(self, key: str, data: bytes) -> None: ...

    def get_record(self, key: str) -> bytes | None: ...

    def list_records(self, prefix: str) -> list[str]: ...
