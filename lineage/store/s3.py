"""A repository in S3 or an S3-compatible store: conditional puts for claims, the record uploaded last.

S3 puts are atomic per object and reads are strongly consistent, so uploading `last` after every
other file is enough for readers; `If-None-Match: *` makes `create` an exclusive claim. S3 keys may
hold anything ('..', '//', backslashes): listings and downloads skip those the store would refuse.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.store.base import Store, StoredFile, check_files, check_key, key_problem

ENDPOINT_ENV = "TRITONFLOW_S3_ENDPOINT_URL"
# NOTE: short on purpose: an unreachable endpoint must fail in seconds, not after a minute of retries.
_CONFIG = Config(connect_timeout=2, read_timeout=20, retries={"total_max_attempts": 2, "mode": "standard"})
# Written last into a downloaded folder: its presence (with the listing's digest) means complete.
_COMPLETE = ".tritonflow-complete"
_CLAIM_LOST = {"PreconditionFailed", "ConditionalRequestConflict"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}


class S3Store(Store):
    def __init__(self, uri: str) -> None:
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not uri.startswith("s3://") or not bucket:
            raise RepositoryError(f"{uri!r} is not an S3 repository: expected s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # NOTE: both become folders of the download cache (local_dir): '..' there would leave it.
        if problem := key_problem(f"{bucket}/{self.prefix}" if self.prefix else bucket):
            raise RepositoryError(
                f"{uri!r} is not a safe repository URI ({problem}): use s3://bucket/prefix with plain names"
            )
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    # -- plumbing ----------------------------------------------------------------------------
    @cached_property
    def _client(self) -> Any:
        endpoint = os.environ.get(ENDPOINT_ENV) or None
        # Path-style addressing: S3-compatible servers (MinIO, moto, Ceph) rarely serve bucket subdomains.
        config = _CONFIG.merge(Config(s3={"addressing_style": "path"})) if endpoint else _CONFIG
        try:
            return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        except (ValueError, BotoCoreError) as exc:
            raise RepositoryError(f"cannot open {self.uri} (endpoint {endpoint}): {exc}") from None

    def _key(self, key: str, *, root: bool = False) -> str:
        """The object key of a checked repository key."""
        return "/".join(p for p in (self.prefix, check_key(key, root=root)) if p)

    def _folder(self, prefix: str) -> str:
        """The key prefix of everything under folder `prefix` ('' for the repository's root)."""
        key = self._key(prefix, root=True)
        return key + "/" if key else ""

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key, root=True)}"

    def _error(self, exc: Exception) -> RepositoryError:
        """A message that says what is wrong with this repository and how to fix it."""
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            endpoint = self._client.meta.endpoint_url
            return RepositoryError(
                f"cannot reach S3 endpoint {endpoint} for {self.uri}: check {ENDPOINT_ENV} "
                f"(or AWS_ENDPOINT_URL_S3) and the network ({exc})"
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return RepositoryError(
                f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE) ({exc})"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return RepositoryError(
                    f"bucket {self.bucket!r} does not exist (repository {self.uri}): create it or fix the URI"
                )
            if code in _DENIED:
                return RepositoryError(
                    f"access denied to {self.uri} ({code}): check the AWS credentials and the bucket policy"
                )
        return RepositoryError(f"S3 request on {self.uri} failed: {exc}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from exc

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        """Every object strictly under folder `prefix`, with its key, ETag, size and LastModified."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._folder(prefix)
        )
        return [obj for page in pages for obj in page.get("Contents", [])]

    def _safe_objects(self, prefix: str) -> dict[str, dict[str, Any]]:
        """`_objects` by their key relative to folder `prefix`, leaving out keys the store refuses
        (and the zero-byte 'folder/' markers consoles make, whose last part is empty)."""
        folder = self._folder(prefix)
        with self._errors():
            objects = self._objects(prefix)
        return {o["Key"][len(folder) :]: o for o in objects if key_problem(o["Key"][len(folder) :]) is None}

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            out = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if out.get("Errors"):
                key, message = out["Errors"][0]["Key"], out["Errors"][0].get("Message")
                raise RepositoryError(f"could not delete s3://{self.bucket}/{key}: {message}")

    # -- the Store contract ------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        with self._errors():
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    raise NotFound(f"{self._url(key)} does not exist") from None
                raise

    def write(self, key: str, data: bytes) -> None:
        with self._errors():
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        with self._errors():
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            except ClientError as exc:
                # NOTE: a retried put whose first attempt landed also reads as lost: that number is
                # skipped, never shared.
                if exc.response.get("Error", {}).get("Code") in _CLAIM_LOST:
                    return False
                raise
        return True

    def walk(self, prefix: str) -> list[StoredFile]:
        below = f"{prefix}/" if prefix else ""
        return [
            StoredFile(below + rel, o["Size"], o["LastModified"].timestamp())
            for rel, o in sorted(self._safe_objects(prefix).items())
        ]

    def list(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        names: set[str] = set()
        with self._errors():
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/"
            )
            for page in pages:
                names.update(p["Prefix"][len(folder) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(folder) :] for o in page.get("Contents", []))
        return sorted(n for n in names if key_problem(n) is None)  # e.g. '' of a 'folder/' marker

    def delete(self, prefix: str) -> None:
        key = self._key(prefix)
        with self._errors():
            self._delete_keys([o["Key"] for o in self._objects(prefix)] + [key])

    def publish(self, prefix: str, files: dict[str, bytes], last: str) -> None:
        check_files(prefix, files, last)
        uploaded: list[str] = []
        try:
            for name in sorted(files, key=lambda n: n == last):  # stable: `last` moves to the end
                key = self._key(f"{prefix}/{name}")
                uploaded.append(key)  # before the put: a put that fails late may still have landed
                self._client.put_object(Bucket=self.bucket, Key=key, Body=files[name])
        except BaseException as exc:
            left = "no file was left behind"
            try:
                self._delete_keys(uploaded[::-1])  # `last`, if it was reached, goes first
            except Exception:  # the original error is the one to report
                left = f"partial files may remain under {self._url(prefix)}/"
            if isinstance(exc, BotoCoreError | ClientError):
                raise RepositoryError(
                    f"could not publish {self._url(prefix)}: {self._error(exc)}; {left}"
                ) from exc
            raise

    def fingerprint(self, key: str) -> str | None:
        # NOTE: a listing rather than head_object: HEAD answers a bare 404 for a missing bucket too.
        full = self._key(key)
        with self._errors():
            page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=full, MaxKeys=1)
        found = page.get("Contents", [])
        return found[0]["ETag"] if found and found[0]["Key"] == full else None

    def local_dir(self, prefix: str, cache: Path) -> Path:
        safe = self._safe_objects(prefix)
        if not safe:
            raise NotFound(f"{self._url(prefix)} has no files")
        files = {o["Key"]: rel.split("/") for rel, o in safe.items()}
        # NOTE: the bucket, the prefix and `prefix` are checked keys: dest is inside the cache.
        dest = cache.joinpath(self.bucket, *self._key(prefix, root=True).split("/"))
        listing = sorted(f"{o['Key']} {o['ETag']} {o['Size']}" for o in safe.values())
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
        if _complete(dest) == digest:
            return dest
        # Download beside the target, then rename: a folder holding the marker is always complete.
        stage = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
        try:
            with self._errors():
                for key, parts in files.items():
                    path = stage.joinpath(*parts)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._client.download_file(self.bucket, key, str(path))
            (stage / _COMPLETE).write_text(digest)
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(stage, dest)
        except OSError as exc:
            if _complete(dest) != digest:  # not a concurrent download of the same files that won
                raise RepositoryError(f"could not download {self._url(prefix)} to {dest}: {exc}") from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dest


def _complete(folder: Path) -> str | None:
    try:
        return (folder / _COMPLETE).read_text()
    except OSError:
        return None
