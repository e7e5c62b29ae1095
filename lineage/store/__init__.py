"""Stores hold the repository's bytes; one small module per kind, all of the `Store` shape."""

from __future__ import annotations

import os

from tritonflow.lineage.imports import load_object
from tritonflow.lineage.store.base import Store, StoredFile, UnsafeKey, check_key

# scheme -> "module.Class", imported on first use (boto3 only when S3 is used).
STORES = {
    "s3": "tritonflow.lineage.store.s3.S3Store",
    "file": "tritonflow.lineage.store.local.LocalStore",
}


def open_store(uri: str | os.PathLike[str]) -> Store:
    """The store for a repository URI: `s3://bucket/prefix` or a local path."""
    uri = os.fspath(uri)
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    if scheme not in STORES:
        raise ValueError(f"unsupported repository {uri!r}: use a local path or s3://bucket/prefix")
    store: Store = load_object(STORES[scheme])(uri)
    return store


__all__ = ["Store", "StoredFile", "UnsafeKey", "check_key", "open_store"]
