"""The preference store: content-addressed objects and round manifests."""

from unigap.store.base import CorruptObjectError, Store, StoreError, sha256
from unigap.store.local import LocalStore

__all__ = ["CorruptObjectError", "LocalStore", "Store", "StoreError", "sha256"]
