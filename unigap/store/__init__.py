"""The preference store: content-addressed objects and round manifests."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from unigap.store.base import CorruptObjectError, Store, StoreError, sha256
from unigap.store.local import LocalStore

__all__ = ["CorruptObjectError", "LocalStore", "Store", "StoreError", "open_store", "sha256"]


def open_store(url: str) -> Store:
    """A plain path is a local directory; `s3://bucket[/prefix]` is a bucket, reached through
    UNIGAP_S3_ENDPOINT (default https://s3.amazonaws.com; its scheme decides TLS),
    UNIGAP_S3_ACCESS_KEY / UNIGAP_S3_SECRET_KEY (else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
    and UNIGAP_S3_REGION."""
    url = str(url)
    if "://" not in url:
        return LocalStore(url)
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"store {url!r} is neither a directory nor s3://bucket[/prefix]")
    from unigap.store.s3 import S3Store  # only S3 users need minio installed

    env = os.environ.get
    return S3Store(
        parts.netloc,
        parts.path.strip("/"),
        endpoint=env("UNIGAP_S3_ENDPOINT") or "https://s3.amazonaws.com",
        access_key=env("UNIGAP_S3_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID"),
        secret_key=env("UNIGAP_S3_SECRET_KEY") or env("AWS_SECRET_ACCESS_KEY"),
        region=env("UNIGAP_S3_REGION") or None,
    )
