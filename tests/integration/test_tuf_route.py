"""The controller signs uploaded bundles into its TUF repository and serves the metadata to devices."""

import hashlib

import pytest
from tuf.api.metadata import Metadata

from firmware_sim.procs import start_controller

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(mosquitto, tmp_path_factory):
    proc = start_controller(tmp_path_factory.mktemp("ctl"), broker_host=mosquitto.host, broker_port=mosquitto.port)
    with proc.client() as c:
        yield c
    proc.stop()


def test_upload_releases_the_bundle_in_signed_targets(client, make_bundle):
    bundle = make_bundle(1)
    assert client.post("/v1/models", content=bundle).status_code == 201
    ts = Metadata.from_bytes(client.get("/v1/tuf/metadata/timestamp.json").content)
    snap = Metadata.from_bytes(client.get(f"/v1/tuf/metadata/{ts.signed.snapshot_meta.version}.snapshot.json").content)
    tv = snap.signed.meta["targets.json"].version
    targets = Metadata.from_bytes(client.get(f"/v1/tuf/metadata/{tv}.targets.json").content)
    root = Metadata.from_bytes(client.get("/v1/tuf/metadata/1.root.json").content)
    root.verify_delegate("targets", targets)  # the release-key threshold signed it
    t = targets.signed.targets["digits/1.tar"]
    assert t.hashes == {"sha256": hashlib.sha256(bundle).hexdigest()} and t.length == len(bundle)
    assert t.custom["model"] == "digits" and t.custom["version"] == 1 and t.custom["floor"] == 0


@pytest.mark.parametrize("name", ["..%2Fkeys%2Fdirector.pem", "9.root.json", "nope.json", "root.json"])
def test_unknown_or_unsafe_metadata_names_are_404(client, name):
    r = client.get(f"/v1/tuf/metadata/{name}")
    assert r.status_code == 404
