"""The S3 / MinIO store: the same layout and guarantees as the local directory, in a bucket.

Objects live at `<prefix>/objects/<sha[:2]>/<sha>` and records at `<prefix>/records/<key>`. A single
S3 PUT is atomic (readers see the old object or the whole new one), so a round's manifest, written
last, is published exactly as in the local backend. This is the only module that imports `minio`.
"""

from __future__ import annotations

import io
import os
import time
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from unigap.store.base import CorruptObjectError, StoreError, object_key, sha256

_MISSING = ("NoSuchKey",)  # not a failure: callers turn it into KeyError / None / False


def _transient(e: Exception) -> bool:
    """Worth another try: the network (refused, reset, timed out) or the server (5xx, throttling)."""
    if isinstance(e, (urllib3.exceptions.HTTPError, OSError)):
        return True
    if isinstance(e, ServerError):
        return e.status_code >= 500
    if isinstance(e, S3Error):
        return getattr(e.response, "status", 0) >= 500 or e.code in ("SlowDown", "RequestTimeout")
    if isinstance(e, InvalidResponseError):  # a proxy's HTML 502/503 page
        return getattr(e, "_code", 0) >= 500
    return False


def _reason(e: Exception) -> str:
    """One short line: the S3 error code, or the socket error urllib3 wraps ("Connection refused")."""
    if isinstance(e, S3Error):
        return f"{e.code}: {e.message}"
    cause: BaseException | None = e
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    return cause.strerror if cause is not None else (str(e).splitlines() or [type(e).__name__])[0]


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str = "https://s3.amazonaws.com",
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool | None = None,
        region: str | None = None,
        create_bucket: bool = True,
        attempts: int = 3,
        backoff_s: float = 0.2,
        connect_timeout_s: float = 5.0,
    ):
        """`endpoint` is `http(s)://host[:port]` or `host[:port]`; `secure` defaults to its scheme
        (https when none). Transient failures are retried `attempts` times in all, sleeping
        `backoff_s`, then twice that, and so on."""
        url = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
        if url.scheme not in ("", "http", "https") or not url.netloc or url.path.strip("/"):
            raise ValueError(f"S3 endpoint {endpoint!r} is not of the form http(s)://host[:port]")
        secure = url.scheme != "http" if secure is None else secure
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = f"{'https' if secure else 'http'}://{url.netloc}"
        self.where = f"{self.endpoint}/{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.attempts, self.backoff_s = max(1, attempts), backoff_s
        # minio's default client retries 5 times and waits up to 5 minutes per request; retries
        # are done here instead (bounded, with a clear error), so urllib3 makes exactly one try.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=60.0),  # read: per socket read, not per body
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(
            url.netloc, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
        )
        if not self._call(self.client.bucket_exists, bucket):
            if not create_bucket:
                raise StoreError(f"S3 store {self.where}: bucket {bucket} does not exist")
            try:
                self._call(self.client.make_bucket, bucket, region)
            except StoreError:
                if not self._call(self.client.bucket_exists, bucket):  # lost a race with another creator: fine
                    raise

    # ------------------------------------------------------------------ plumbing
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, fn, *args):
        """One S3 operation, retried on transient failures; any failure ends as one StoreError line."""
        for attempt in range(self.attempts):
            try:
                return fn(*args)
            except S3Error as e:
                if e.code in _MISSING:
                    raise
                err: Exception = e
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as e:
                err = e
            if not _transient(err) or attempt + 1 == self.attempts:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise StoreError(f"S3 store {self.where} failed{tries}: {_reason(err)}") from None
            time.sleep(self.backoff_s * 2**attempt)

    def _read(self, key: str) -> bytes:
        resp = self.client.get_object(self.bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def _write(self, key: str, data: bytes) -> None:
        # a fresh stream per attempt: a retried upload must start from byte 0
        self._call(lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)))

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return self._call(self._read, key)
        except S3Error:  # only NoSuchKey gets through _call
            return None

    def read_key(self, key: str) -> bytes | None:
        """An object by its key under the prefix, whatever wrote it (not the store's layout: no
        checksum to verify); None when there is none."""
        return self._read_or_none(self._key(key))

    # ------------------------------------------------------------------ the Store interface
    def put_object(self, data: bytes) -> str:
        sha = sha256(data)
        if not self.has_object(sha):  # content-addressed: an existing object already holds these bytes
            self._write(self._key(object_key(sha)), data)
        return sha

    def get_object(self, sha: str) -> bytes:
        key = self._key(object_key(sha))
        data = self._read_or_none(key)
        if data is None:
            raise KeyError(f"object {sha} is not in the store at {self.where}")
        if sha256(data) != sha:
            raise CorruptObjectError(sha, f"s3://{self.bucket}/{key}")
        return data

    def has_object(self, sha: str) -> bool:
        try:
            self._call(self.client.stat_object, self.bucket, self._key(object_key(sha)))
            return True
        except S3Error:
            return False

    def delete_object(self, sha: str) -> None:
        self._call(
            self.client.remove_object, self.bucket, self._key(object_key(sha))
        )  # S3: deleting a missing key succeeds

    def put_record(self, key: str, data: bytes) -> None:
        self._write(self._key(f"records/{key}"), data)

    def get_record(self, key: str) -> bytes | None:
        return self._read_or_none(self._key(f"records/{key}"))

    def list_records(self, prefix: str) -> list[str]:
        base = self._key("records/")
        names = self._call(
            lambda: [o.object_name for o in self.client.list_objects(self.bucket, base + prefix, recursive=True)]
        )
        return sorted(name[len(base) :] for name in names)
