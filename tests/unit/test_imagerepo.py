"""The controller's TUF image repository, with real keys and files (python-tuf Metadata API)."""

import pytest
from tuf.api.metadata import Metadata

from controller.release.imagerepo import DevKeys, ImageRepoError, ImageRepository

pytestmark = pytest.mark.unit
SHA = "ab" * 32


@pytest.fixture
def repo(tmp_path):
    keys = DevKeys.load_or_create(tmp_path / "keys")
    return ImageRepository.create(tmp_path / "repo", keys), keys


def add(repo, keys, version, sha=SHA):
    return repo.add_bundle(
        model="digits",
        version=version,
        sha256=sha,
        length=10,
        runtime="onnx",
        hardware={},
        signers=keys.release[:2],
        online=keys.online,
    )


def test_new_repository_has_threshold_roles_and_verifiable_metadata(repo):
    r, _keys = repo
    root = Metadata.from_bytes(r.root_bytes(1))
    assert root.signed.roles["root"].threshold == 2 and len(root.signed.roles["root"].keyids) == 3
    assert root.signed.roles["targets"].threshold == 2
    root.verify_delegate("root", root)  # self-signed by the threshold
    root.verify_delegate("targets", r.md["targets"])


def test_release_bumps_targets_snapshot_and_timestamp(repo):
    r, keys = repo
    add(r, keys, 1)
    assert r.md["targets"].signed.version == 2
    assert r.md["snapshot"].signed.meta["targets.json"].version == 2
    assert r.md["timestamp"].signed.snapshot_meta.version == r.md["snapshot"].signed.version
    assert r.metadata_file("2.targets.json") is not None and r.metadata_file("timestamp.json") is not None
    assert r.targets["digits/1.tar"].custom == {"model": "digits", "version": 1, "runtime": "onnx", "hardware": {}, "floor": 0}


def test_floor_is_signed_into_every_target_and_never_lowered(repo):
    r, keys = repo
    add(r, keys, 1)
    add(r, keys, 2, "cd" * 32)
    r.set_floor("digits", 2, signers=keys.release[:2], online=keys.online)
    assert {t.custom["floor"] for t in r.targets.values()} == {2}
    add(r, keys, 3, "ef" * 32)
    assert r.targets["digits/3.tar"].custom["floor"] == 2
    with pytest.raises(ImageRepoError, match="would re-allow revoked versions"):
        r.set_floor("digits", 1, signers=keys.release[:2], online=keys.online)


def test_a_revoked_version_leaves_the_targets_and_the_floor_only_rises(repo):
    r, keys = repo
    add(r, keys, 1)
    add(r, keys, 2, "cd" * 32)
    add(r, keys, 3, "ef" * 32)
    r.stage_revoke("digits", 2, floor=1)
    assert set(r.targets) == {"digits/1.tar", "digits/3.tar"} and r.floor("digits") == 1
    r.stage_revoke("digits", 1, floor=3)
    assert set(r.targets) == {"digits/3.tar"} and r.floor("digits") == 3
    r.stage_revoke("digits", 3, floor=2)  # never lowered
    assert r.targets == {}


def test_rereleasing_a_version_with_other_content_is_refused(repo):
    r, keys = repo
    add(r, keys, 1)
    with pytest.raises(ImageRepoError, match="already released"):
        add(r, keys, 1, "cd" * 32)


@pytest.mark.parametrize("name", ["../keys", "root.json.bak", "x.json", "1.root.json/..", ""])
def test_metadata_file_names_are_validated(repo, name):
    assert repo[0].metadata_file(name) is None


def test_repository_reopens_from_disk(repo, tmp_path):
    r, keys = repo
    add(r, keys, 1)
    again = ImageRepository(tmp_path / "repo")
    assert again.targets == r.targets and again.md["root"].signed.version == 1
    with pytest.raises(ImageRepoError, match="already exists"):
        ImageRepository.create(tmp_path / "repo", keys)
