"""The store layer's second wall: whatever the caller, no key leaves the repository, on both stores
(a local folder and a real moto S3 server), in every method; listings never hand out a name the
store would refuse; and no symlink or '..' brings back a byte of a file outside the repository."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store import Store, UnsafeKey, check_key, open_store
from tritonflow.lineage.store.s3 import S3Store

RECORD = {"checkpoint.tl": b"x", "deployment.json": b"{}"}

# method -> a call of it on one key; the cache of local_dir is a folder beside the repository.
CALLS: dict[str, Callable[[Store, str, Path], Any]] = {
    "read": lambda s, k, _: s.read(k),
    "write": lambda s, k, _: s.write(k, b"written"),
    "create": lambda s, k, _: s.create(k, b"created"),
    "list": lambda s, k, _: s.list(k),
    "walk": lambda s, k, _: s.walk(k),
    "delete": lambda s, k, _: s.delete(k),
    "publish": lambda s, k, _: s.publish(k, RECORD, "deployment.json"),
    "publish a file named": lambda s, k, _: s.publish(
        "m/1", {k: b"x", "deployment.json": b"{}"}, "deployment.json"
    ),
    "publish last": lambda s, k, _: s.publish("m/1", {"a": b"x", k: b"{}"}, k),
    "fingerprint": lambda s, k, _: s.fingerprint(k),
    "local_dir": lambda s, k, cache: s.local_dir(k, cache),
}
TAKES_THE_ROOT = {"list", "walk", "local_dir"}  # where '' means the repository's root
READS = ["read", "list", "walk", "fingerprint", "local_dir"]


def bad_keys(outside: Path) -> list[str]:
    """Keys that leave the repository by their spelling; the absolute ones lead into `outside`
    (a folder beside the repository), so that the old code's failure to refuse harms nothing."""
    return [
        "..",
        ".",
        "../x",
        "m/../../x",
        "m/./x",
        "./m",
        "m//x",
        "m/",
        str(outside / "x"),
        "/" + str(outside / "x"),
        "C:/x",
        "m\\..\\..\\x",
        "m/x\x00.txt",
        "m/x\n",
        "m/\x7f",
        "m/\x85",
    ]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    uri = request.getfixturevalue("s3_bucket" if request.param == "s3" else "local_repo")
    return open_store(str(uri))


def everything_outside(store: Store, tmp_path: Path, s3: Any) -> set[str]:
    """What exists beside the repository: files under tmp_path outside it, objects outside the prefix."""
    if isinstance(store, S3Store):
        page = s3.list_objects_v2(Bucket=store.bucket)
        return {o["Key"] for o in page.get("Contents", []) if not o["Key"].startswith(store.prefix + "/")}
    repo = Path(store.uri)
    return {str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(repo)}


@pytest.mark.parametrize("method", CALLS)
def test_every_method_refuses_keys_that_leave_the_repository(store, method, tmp_path, request):
    s3 = request.getfixturevalue("s3_server").client if isinstance(store, S3Store) else None
    outside = tmp_path / "outside"
    store.write("m/config.pbtxt", b"config")
    before = everything_outside(store, tmp_path, s3)
    keys = bad_keys(outside) + ([] if method in TAKES_THE_ROOT else [""])
    for key in keys:
        with pytest.raises(UnsafeKey) as info:
            CALLS[method](store, key, tmp_path / "cache")
        assert repr(key) in str(info.value) and "refused repository key" in str(info.value)
        assert isinstance(info.value, RepositoryError)  # the CLI and the node already handle these
    assert everything_outside(store, tmp_path, s3) == before
    assert [f.key for f in store.walk("")] == ["m/config.pbtxt"]
    assert store.read("m/config.pbtxt") == b"config"
    # '' is the root where a folder is meant, not refused
    if method == "list":
        assert store.list("") == ["m"]
    elif method == "walk":
        assert [f.key for f in store.walk("")] == ["m/config.pbtxt"]
    elif method == "local_dir":
        assert (store.local_dir("", tmp_path / "cache") / "m" / "config.pbtxt").read_bytes() == b"config"


@pytest.mark.parametrize(
    "key", ["m", "m/1/deployment.json", "m/.versions/3", "m/.staging-3-0123abcd/x", "a..b/...", "modèle/1"]
)
def test_safe_keys_still_work(store, key):
    assert check_key(key) == key
    store.write(key, b"bytes")
    assert store.read(key) == b"bytes" and store.fingerprint(key) is not None
    assert [f.key for f in store.walk("")] == [key]
    store.delete(key)
    assert store.walk("") == []


def test_listings_skip_names_the_store_would_refuse(store, tmp_path, request):
    store.write("m/config.pbtxt", b"config")
    store.write("m/1/deployment.json", b"{}")
    junk = ["a\\b/config.pbtxt", "m/x\x01", "m/1/back\\slash"]
    if isinstance(store, S3Store):  # S3 keys may hold anything: put them behind the store's back
        junk += ["../x/config.pbtxt", "m//y", "m/1/../../../z", "m/"]
        for key in junk:
            s3 = request.getfixturevalue("s3_server").client
            s3.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=b"junk")
    else:
        for key in junk:
            path = Path(store.uri, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"junk")
    assert store.list("") == ["m"]
    assert store.list("m") == ["1", "config.pbtxt"]
    assert store.list("m/1") == ["deployment.json"]
    assert [f.key for f in store.walk("")] == ["m/1/deployment.json", "m/config.pbtxt"]
    if isinstance(store, S3Store):  # a download holds only what a listing hands out (+ its marker)
        downloaded = store.local_dir("m/1", tmp_path / "cache")
        assert sorted(os.listdir(downloaded)) == [".tritonflow-complete", "deployment.json"]
    assert ModelRepository(store.uri).models() == ["m"]  # a stray name does not fail the listing


def test_an_s3_repository_with_an_unsafe_bucket_or_prefix_is_refused():
    for uri in ("s3://bucket/a/../b", "s3://bucket/a//b", "s3://bucket/a\\b", "s3://../models", "s3://./m"):
        with pytest.raises(RepositoryError, match="is not a safe repository URI"):
            S3Store(uri)


# -- a sentinel beside the repository: its bytes must come back from no call ------------------------
@pytest.fixture
def sentinel(local_repo: Path) -> tuple[Path, bytes]:
    """A secret file beside the repository, and symlinks inside it that lead out to it."""
    secret = local_repo.parent / "secret.txt"
    content = f"SENTINEL-{uuid.uuid4().hex}".encode()
    secret.write_bytes(content)
    (local_repo / "m" / "1").mkdir(parents=True)
    (local_repo / "m" / "config.pbtxt").symlink_to("../../secret.txt")
    (local_repo / "m" / "1" / "checkpoint.tl").symlink_to(secret)
    (local_repo / "m" / "1" / "deployment.json").symlink_to(secret)
    (local_repo / "m" / "2").symlink_to(local_repo.parent, target_is_directory=True)
    (local_repo / "out").symlink_to(local_repo.parent, target_is_directory=True)
    (local_repo / "loop").symlink_to("loop")  # a symlink loop: an error, never a crash
    return secret, content


def test_no_symlink_or_dot_dot_key_returns_a_byte_from_outside(local_repo, sentinel, tmp_path):
    secret, content = sentinel
    store, repository = open_store(str(local_repo)), ModelRepository(local_repo)
    keys = ["../secret.txt", "m/config.pbtxt", "m/1/checkpoint.tl", "m/1/deployment.json"]
    keys += ["m/2/secret.txt", "out/secret.txt", "out", "m/2", "loop", "loop/x"]
    calls: list[Callable[[], Any]] = [
        lambda k=k, m=m: CALLS[m](store, k, tmp_path / "cache") for k in keys for m in READS
    ]
    calls += [
        lambda: store.local_dir("m/1", tmp_path / "cache"),
        lambda: store.local_dir("", tmp_path / "cache"),
        lambda: repository.read_config("m"),
        lambda: repository.read_record("m", 1),
        repository.entries,
        repository.models,
    ]
    answers = []
    for call in calls:
        try:
            answers.append(repr(call()))
        except (RepositoryError, NotFound) as exc:
            answers.append(str(exc))
    assert not [a for a in answers if content.decode() in a]
    assert store.list("") == ["m"] and store.list("m") == ["1"] and store.list("m/1") == []
    assert store.walk("") == [] and repository.models() == []
    assert store.fingerprint("m/1/deployment.json") is None  # not in the repository: as if absent
    with pytest.raises(
        UnsafeKey, match=r"m/1/(checkpoint.tl|deployment.json).*symbolic link leads it outside"
    ):
        store.local_dir("m/1", tmp_path / "cache")  # the caller would read the folder's files itself


@pytest.mark.parametrize("method", ["write", "create", "delete", "publish"])
def test_no_write_goes_through_a_symlink_to_outside(local_repo, sentinel, tmp_path, method):
    secret, content = sentinel
    store = open_store(str(local_repo))
    for key in [
        "out/secret.txt",
        "m/2/secret.txt",
        "m/config.pbtxt",
        "m/1/deployment.json",
        "out/new",
        "m/2/9",
    ]:
        with pytest.raises(UnsafeKey, match="symbolic link leads it outside"):
            CALLS[method](store, key, tmp_path / "cache")
    assert secret.read_bytes() == content
    assert sorted(p.name for p in local_repo.parent.iterdir()) == ["repo", "secret.txt"]
    assert (local_repo / "m" / "config.pbtxt").is_symlink()  # not replaced by a file either
