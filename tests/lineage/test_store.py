"""The Store contract, run against both stores (a local folder and a real moto S3 server), plus
the S3 store's failure messages."""

from __future__ import annotations

import time

import pytest

from tritonflow.lineage.errors import NotFound, RepositoryError
from tritonflow.lineage.store import Store, open_store
from tritonflow.lineage.store.local import LocalStore
from tritonflow.lineage.store.s3 import ENDPOINT_ENV, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    uri = request.getfixturevalue("s3_bucket" if request.param == "s3" else "local_repo")
    return open_store(str(uri))


def test_open_store_picks_the_store_by_scheme(local_repo, tmp_path):
    assert isinstance(open_store(str(local_repo)), LocalStore)
    assert isinstance(open_store(f"file://{local_repo}"), LocalStore)
    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and s3.uri == "s3://bucket/some/prefix"
    assert open_store("s3://bucket").uri == "s3://bucket"


def test_read_write(store):
    with pytest.raises(NotFound, match="does not exist"):
        store.read("m/config.pbtxt")
    store.write("m/config.pbtxt", b"one")
    assert store.read("m/config.pbtxt") == b"one"
    store.write("m/config.pbtxt", b"two")
    assert store.read("m/config.pbtxt") == b"two"
    with pytest.raises(NotFound):
        store.read("m")  # a folder is not an object


def test_create_is_exclusive(store):
    assert store.create("m/.versions/1", b"first")
    assert not store.create("m/.versions/1", b"second")
    assert store.read("m/.versions/1") == b"first"
    assert store.create("m/.versions/2", b"")


def test_list_returns_direct_children_sorted(store):
    assert store.list("") == []
    for key in ("b/config.pbtxt", "b/1/x.bin", "b/1/sub/y.bin", "a/config.pbtxt", "bb/config.pbtxt"):
        store.write(key, b"x")
    assert store.list("") == ["a", "b", "bb"]
    assert store.list("b") == ["1", "config.pbtxt"]
    assert store.list("b/1") == ["sub", "x.bin"]
    assert store.list("nothing") == []
    assert store.list("b/config.pbtxt") == []  # a file has no children


def test_delete_is_recursive_and_precise(store):
    for key in ("m/1/a", "m/1/sub/b", "m/10/a", "m/config.pbtxt"):
        store.write(key, b"x")
    store.delete("m/1")
    assert store.list("m") == ["10", "config.pbtxt"]  # m/10 shares the prefix 'm/1' but stays
    store.delete("m/config.pbtxt")
    assert store.list("m") == ["10"]
    store.delete("absent")  # absent is fine
    store.delete("m")
    assert store.list("") == []


def test_publish_makes_the_folder_with_every_file(store):
    files = {"checkpoint.tl": b"\x00model", "sub/extra.txt": b"extra", "deployment.json": b"{}"}
    store.publish("m/1", files, last="deployment.json")
    assert store.list("m/1") == ["checkpoint.tl", "deployment.json", "sub"]
    assert {name: store.read(f"m/1/{name}") for name in files} == files


def test_failed_publish_leaves_no_record_and_no_partial_version(store):
    store.write("m/config.pbtxt", b"config")
    # 'a.bin' is written first, then the non-bytes value fails, before the record.
    files = {"a.bin": b"a", "b.bin": 123, "deployment.json": b"{}"}
    with pytest.raises((RepositoryError, TypeError)):
        store.publish("m/1", files, last="deployment.json")
    assert store.list("m") == ["config.pbtxt"]
    with pytest.raises(NotFound):
        store.read("m/1/deployment.json")


def test_fingerprint_changes_on_write(store):
    assert store.fingerprint("m/config.pbtxt") is None
    store.write("m/config.pbtxt", b"aaaa")
    first = store.fingerprint("m/config.pbtxt")
    assert first is not None and store.fingerprint("m/config.pbtxt") == first
    store.write("m/config.pbtxt", b"bbbb")  # same size, at once: must still differ
    assert store.fingerprint("m/config.pbtxt") != first
    assert store.fingerprint("m/config") is None  # a prefix of a key is not the key


def test_local_dir_holds_the_folder_files(store, tmp_path):
    cache = tmp_path / "cache"
    store.publish(
        "m/1", {"checkpoint.tl": b"one", "sub/x": b"x", "deployment.json": b"{}"}, "deployment.json"
    )
    store.publish("m/2", {"checkpoint.tl": b"two", "deployment.json": b"{}"}, "deployment.json")
    one, two = store.local_dir("m/1", cache), store.local_dir("m/2", cache)
    assert one != two
    assert (one / "checkpoint.tl").read_bytes() == b"one" and (one / "sub" / "x").read_bytes() == b"x"
    assert (two / "checkpoint.tl").read_bytes() == b"two"
    with pytest.raises(NotFound):
        store.local_dir("m/3", cache)


def test_s3_local_dir_downloads_once_and_again_after_a_change(s3_bucket, tmp_path):
    store = S3Store(s3_bucket)
    cache = tmp_path / "cache"
    store.write("m/config.pbtxt", b"v1")
    folder = store.local_dir("m", cache)
    assert folder.is_relative_to(cache) and (folder / "config.pbtxt").read_bytes() == b"v1"
    inode = (folder / "config.pbtxt").stat().st_ino
    assert (
        store.local_dir("m", cache) / "config.pbtxt"
    ).stat().st_ino == inode  # complete: not fetched again
    store.write("m/config.pbtxt", b"v2")
    assert (store.local_dir("m", cache) / "config.pbtxt").read_bytes() == b"v2"


def test_s3_publish_uploads_the_record_after_every_other_file(s3_bucket, monkeypatch):
    store = S3Store(s3_bucket)
    order: list[str] = []
    put = store._client.put_object
    monkeypatch.setattr(store._client, "put_object", lambda **kw: order.append(kw["Key"]) or put(**kw))
    store.publish("m/1", {"z.bin": b"z", "deployment.json": b"{}", "a.bin": b"a"}, last="deployment.json")
    assert sorted(order[:2]) == ["models/m/1/a.bin", "models/m/1/z.bin"]
    assert order[2:] == ["models/m/1/deployment.json"]


# -- S3 failures: each one a RepositoryError naming the repository and the fix -------------------
S3_CALLS = {
    "read": lambda s: s.read("m/config.pbtxt"),
    "write": lambda s: s.write("m/config.pbtxt", b"x"),
    "create": lambda s: s.create("m/.versions/1", b""),
    "list": lambda s: s.list("m"),
    "delete": lambda s: s.delete("m"),
    "fingerprint": lambda s: s.fingerprint("m/config.pbtxt"),
    "publish": lambda s: s.publish("m/1", {"a": b"a", "deployment.json": b"{}"}, "deployment.json"),
}


@pytest.mark.parametrize("call", S3_CALLS.values(), ids=S3_CALLS.keys())
def test_unreachable_s3_endpoint_fails_fast_and_clearly(call, aws_env, free_port, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port}"  # nothing listens there
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    start = time.monotonic()
    with pytest.raises(RepositoryError, match=f"cannot reach S3 endpoint {endpoint}") as info:
        call(S3Store("s3://bucket/models"))
    assert time.monotonic() - start < 5
    assert "s3://bucket/models" in str(info.value) and ENDPOINT_ENV in str(info.value)


@pytest.mark.parametrize("call", S3_CALLS.values(), ids=S3_CALLS.keys())
def test_missing_bucket_is_named(call, s3_server):
    with pytest.raises(RepositoryError, match="bucket 'no-such-bucket' does not exist"):
        call(S3Store("s3://no-such-bucket/models"))


def test_missing_credentials_are_explained(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RepositoryError, match="no AWS credentials for s3://.*AWS_ACCESS_KEY_ID"):
        S3Store(s3_bucket).read("m/config.pbtxt")


def test_bad_s3_uri_is_refused():
    with pytest.raises(RepositoryError, match="expected s3://bucket/prefix"):
        S3Store("s3:///models")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.write("blocker/key", b"x"),
        lambda s: s.create("blocker/key", b"x"),
        lambda s: s.publish("blocker/1", {"a": b"x", "record": b"{}"}, last="record"),
    ],
    ids=["write", "create", "publish"],
)
def test_local_file_system_failures_are_repository_errors_naming_the_path(local_repo, call):
    store = LocalStore(str(local_repo))
    store.write("blocker", b"a file where a folder belongs")  # fails as root too, unlike permissions
    with pytest.raises(RepositoryError, match="could not .* .*blocker"):
        call(store)
    assert store.read("blocker") == b"a file where a folder belongs"
    with pytest.raises(NotFound):
        store.read("blocker/key")
