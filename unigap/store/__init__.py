"""The preference store: content-addressed objects and round manifests."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from unigap.store.base import CorruptObjectError, Store, StoreError, sha256
from unigap.store.local import LocalStore

__all__ = ["CorruptObjectError", "LocalStore", "Store", "StoreError", "open_store", "read_s3_object", "sha256"]


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
    return _s3_store(parts.netloc, parts.path.strip("/"))


def _s3_store(bucket: str, prefix: str, create_bucket: bool = True):
    """An S3Store with the endpoint and keys of the environment (see `open_store`)."""
    from unigap.store.s3 import S3Store  # only S3 users need minio installed

    env = os.environ.get
    return S3Store(
        bucket,
        prefix,
        endpoint=env("UNIGAP_S3_ENDPOINT") or "https://s3.amazonaws.com",
        access_key=env("UNIGAP_S3_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID"),
        secret_key=env("UNIGAP_S3_SECRET_KEY") or env("AWS_SECRET_ACCESS_KEY"),
        region=env("UNIGAP_S3_REGION") or None,
        create_bucket=create_bucket,
    )


def read_s3_object(url: str) -> bytes:
    """The bytes of one object someone put in a bucket (`s3://bucket/key`, e.g. a prompt pool a
    team uploads), outside any store's layout, read with the settings `open_store` uses.

    Raises ValueError for a URL that is not s3://bucket/key, KeyError when the object does not
    exist, StoreError when the bucket does not exist or S3 cannot be reached (after retries)."""
    parts = urlsplit(str(url))
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key or key.endswith("/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an S3 object URL (s3://bucket/key)")
    data = _s3_store(parts.netloc, "", create_bucket=False).read_key(key)
    if data is None:
        raise KeyError(f"no object {url}")
    return data
