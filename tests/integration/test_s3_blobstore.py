"""The optional S3 bundle store against a real S3-compatible server (moto's, over HTTP with boto3).

Two replicas (in-process apps on one database) with separate data directories keep bundles
in one bucket: pushed through A, downloaded through B with the same bytes; objects are named
``<prefix><sha256>.tar``; an unreachable object store is an error that names it, not a 404.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from controller.app import create_app
from controller.init import init
from controller.release.blobstore import BlobStoreError, S3BlobStore
from firmware_sim.mosquitto import free_port
from tests.integration.test_replicas import TOKEN, prod

pytestmark = [pytest.mark.integration]
BUCKET = "edgefleet-bundles"


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    init(tmp_path / "secrets", tmp_path / "offline", n_root=1, root_threshold=1, n_release=1, release_threshold=1)
    return tmp_path / "secrets"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def test_bundles_pushed_through_one_replica_download_through_another_from_s3(
    tmp_path: Path, database_url: str, secrets: Path, s3: str, make_bundle
) -> None:
    store = {"blob_store": "s3", "s3_bucket": BUCKET, "s3_endpoint_url": s3, "s3_region": "us-east-1", "s3_prefix": "b/"}
    a_app = create_app(prod(tmp_path, "a", database_url, secrets, **store))
    b_app = create_app(prod(tmp_path, "b", database_url, secrets, **store))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bundle = make_bundle(1)
    sha = hashlib.sha256(bundle).hexdigest()
    with TestClient(a_app, headers=auth) as a, TestClient(b_app, headers=auth) as b:
        r = a.post("/v1/models", content=bundle, headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == sha
        objects = boto3.client("s3", endpoint_url=s3, region_name="us-east-1").list_objects_v2(Bucket=BUCKET)["Contents"]
        assert [o["Key"] for o in objects] == [f"b/{sha}.tar"]
        got = b.get(f"/v1/bundles/{sha}")
        assert got.status_code == 200 and got.content == bundle, "B serves what A stored, from the bucket"
        assert b.get(f"/v1/bundles/{'0' * 64}").status_code == 404


def test_an_unreachable_object_store_is_an_error_not_a_missing_bundle(tmp_path: Path, s3: str) -> None:
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    store = S3BlobStore(BUCKET, tmp_path / "cache", client=client)
    sha = store.put(b"bundle bytes")
    assert store.exists(sha) and not store.exists("0" * 64) and not store.exists("not-a-sha")
    down = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1")
    fresh = S3BlobStore(BUCKET, tmp_path / "other-cache", client=down)
    with pytest.raises(BlobStoreError, match="object store"):
        fresh.exists(sha)
