"""Each verification layer refuses on its own.

The update path checks a bundle several times (director signature, TUF
metadata with the version floor, the fetcher's length and sha256, the
updater's own length and sha256, the store's hash at load, golden vectors).
An attack test that goes through all of them passes as long as *one* still
works, so a broken layer goes unnoticed. Here every other layer is switched
off through the updater's seams (a fetcher that writes whatever arrives, an
image repository that vouches for anything, a store that loads without
re-hashing) and the attack is one only the layer under test can see — a
different, valid bundle (same name and version, other weights) that passes
every other check. Each test has its control: the same seams with the
genuine bundle install it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from agent.ota.fetcher import DownloadError, Fetcher, HashError, LengthError
from agent.ota.state import State
from agent.ota.store import Store
from agent.ota.trust import TargetInfo, TrustError, check_agreement
from agent.ota.updater import Updater
from agent.runtime import ModelLoadError, golden_check, load_model
from controller.fleet.director import Director
from shared import bundle as bundle_fmt
from shared.canonical import canonical_json
from shared.manifest import Manifest
from shared.messages import Assignment
from tests.otalab import Lab

pytestmark = pytest.mark.integration


# --- the seams with their checks off ------------------------------------------------


class RawFetcher(Fetcher):
    """The fetcher seam without its length and hash checks: writes whatever the server sends."""

    def __init__(self) -> None:
        super().__init__(timeout=5.0)
        self.calls: list[str] = []

    def download(self, url: str, dest: Path, *, length: int, sha256: str, progress: Any = None) -> None:
        self.calls.append(url)
        with open(dest, "wb") as f:
            for chunk in self._stream(self._open(url), url):
                f.write(chunk)


class VouchingRepo:
    """The image-repository seam vouching for every assignment: no TUF, no floor, no agreement check."""

    def target_for(self, a: Assignment, *, arch: str) -> TargetInfo:
        return TargetInfo(
            path=f"{a.model}/{a.version}.tar", length=a.length, sha256=a.sha256, model=a.model, version=a.version, floor=0
        )


class TrustingStore(Store):
    """The store seam loading bundles without re-hashing them."""

    def verify_bundle(self, sha256: str) -> bundle_fmt.Bundle:
        return bundle_fmt.read(self.bundle_path(sha256).read_bytes())


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    lab = Lab(tmp_path / "lab")
    yield lab
    lab.close()


@pytest.fixture
def genuine(make_bundle: Any) -> bytes:
    return make_bundle(1)


@pytest.fixture
def impostor(make_bundle: Any, genuine: bytes) -> bytes:
    """A valid bundle with the genuine one's name and version but other weights: only hashes tell them apart."""
    other = make_bundle(1, seed=7)
    g, o = bundle_fmt.read(genuine).manifest, bundle_fmt.read(other).manifest
    assert (g.name, g.version) == (o.name, o.version) and other != genuine
    return other


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def bare(lab: Lab, data_dir: Path, *, fetcher: Fetcher | None = None, store: Store | None = None) -> Updater:
    """An updater with every layer off except the director signature and golden vectors (and what is given)."""
    return lab.updater(
        data_dir, fetcher=fetcher or RawFetcher(), image_repo=VouchingRepo(), store=store or TrustingStore(data_dir)
    )


def install(lab: Lab, up: Updater, a: Assignment) -> None:
    up.apply(lab.desired("lab-dev", a))


def serving(up: Updater) -> str | None:
    m = up.host.roles().get("production")
    return None if m is None else m.sha256


def serve_instead(lab: Lab, genuine: bytes, other: bytes) -> Assignment:
    """The assignment of ``genuine`` with ``other``'s bytes served at its URL."""
    a = lab.assignment(genuine)
    (lab.bundle_dir / f"{sha(genuine)}.tar").write_bytes(other)
    return a


def test_control_with_every_layer_off_a_genuine_bundle_installs(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = lab.assignment(genuine)
    (lab.bundle_dir / f"{sha(genuine)}.tar").write_bytes(genuine)
    up = bare(lab, tmp_path / "dev")
    install(lab, up, a)
    assert up.store.ota.state is State.COMMITTED, lab.events
    assert serving(up) == sha(genuine)


def test_control_the_impostor_is_a_valid_bundle_that_installs_under_its_own_hash(
    lab: Lab, tmp_path: Path, impostor: bytes
) -> None:
    """Golden vectors and the director accept the impostor: what the tests below refuse, only hashes can."""
    up = bare(lab, tmp_path / "dev")
    install(lab, up, serve_instead(lab, impostor, impostor))
    assert up.store.ota.state is State.COMMITTED, lab.events
    assert serving(up) == sha(impostor)


# --- the fetcher alone ------------------------------------------------------------


def test_fetcher_alone_refuses_other_bytes_of_the_signed_length(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    altered = genuine[:-1] + bytes([genuine[-1] ^ 1])
    a = serve_instead(lab, genuine, altered)
    dest = tmp_path / "download.part"
    with pytest.raises(HashError, match="does not match the signed"):
        Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert not dest.exists()


def test_fetcher_alone_stops_at_the_signed_length(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine + b"\0" * 4096)
    dest = tmp_path / "download.part"
    with pytest.raises(LengthError, match=f"signed length of {a.length} bytes"):
        Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert dest.stat().st_size == a.length


def test_fetcher_alone_refuses_fewer_bytes_than_signed(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine[:-100])
    dest = tmp_path / "download.part"
    with pytest.raises(DownloadError, match=f"after {a.length - 100} of {a.length} bytes"):
        Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)


def test_fetcher_control_downloads_the_genuine_bundle(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    dest = tmp_path / "download.part"
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert dest.read_bytes() == genuine


# --- the updater's own check ----------------------------------------------------------


def test_updater_check_alone_refuses_an_impostor_download(lab: Lab, tmp_path: Path, genuine: bytes, impostor: bytes) -> None:
    up = bare(lab, tmp_path / "dev")  # raw fetcher, vouching repository, trusting store
    install(lab, up, serve_instead(lab, genuine, impostor))
    assert lab.last("ota.rejected")["message"] == "downloaded bundle does not match the signed length and sha256"
    assert serving(up) is None
    assert not up.store.bundle_path(sha(genuine)).exists() and not up.store.partial_downloads()


# --- the store's check --------------------------------------------------------------------


def test_store_check_alone_refuses_an_altered_stored_bundle_at_install(
    lab: Lab, tmp_path: Path, genuine: bytes, impostor: bytes
) -> None:
    data = tmp_path / "dev"
    up = bare(lab, data, store=Store(data))  # the real store; fetcher and repository off
    up.store.bundle_path(sha(genuine)).write_bytes(impostor)  # the disk changed under the content address
    install(lab, up, serve_instead(lab, genuine, genuine))
    assert "was altered on disk" in lab.last("ota.rejected")["message"]
    assert serving(up) is None


def test_store_check_alone_refuses_an_altered_bundle_at_start(lab: Lab, tmp_path: Path, genuine: bytes, impostor: bytes) -> None:
    data = tmp_path / "dev"
    first = bare(lab, data, store=Store(data))
    install(lab, first, serve_instead(lab, genuine, genuine))
    assert serving(first) == sha(genuine)
    Store(data).bundle_path(sha(genuine)).write_bytes(impostor)
    again = bare(lab, data, store=Store(data))  # a restart: no download, no TUF, only the store's check
    again.restore()
    assert serving(again) is None
    assert "was altered on disk" in lab.last("slot.invalid")["message"]


def test_store_control_trusting_store_would_load_the_impostor(lab: Lab, tmp_path: Path, genuine: bytes, impostor: bytes) -> None:
    data = tmp_path / "dev"
    install(lab, bare(lab, data), serve_instead(lab, genuine, genuine))
    TrustingStore(data).bundle_path(sha(genuine)).write_bytes(impostor)
    again = bare(lab, data)
    again.restore()
    assert serving(again) == sha(genuine)  # the slot's name: the bytes behind it are the impostor's


# --- the director's signature -------------------------------------------------------------


def test_director_signature_alone_refuses_another_signer(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    fetcher = RawFetcher()
    up = bare(lab, tmp_path / "dev", fetcher=fetcher)
    rogue = Director(Ed25519PrivateKey.generate())
    up.apply(canonical_json(rogue.sign_desired("lab-dev", 1, {"production": a}, 3600)))
    assert "desired.rejected" in lab.kinds() and fetcher.calls == []
    assert serving(up) is None
    install(lab, up, a)  # control: the trusted director's signature on the same assignment
    assert serving(up) == sha(genuine)


# --- TUF metadata and the version floor ---------------------------------------------------------


def tuf_only(lab: Lab, data: Path) -> Updater:
    """The real image-repository client; fetcher and store checks off."""
    return lab.updater(data, fetcher=RawFetcher(), store=TrustingStore(data))


def test_tuf_alone_refuses_a_release_signed_by_unknown_keys(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    strangers = [CryptoSigner.generate_ed25519() for _ in range(2)]
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, lab.publish(genuine, signers=strangers))
    assert "UnsignedMetadataError" in lab.last("ota.rejected")["message"]
    assert serving(up) is None


def test_tuf_alone_refuses_a_bundle_it_does_not_list(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, serve_instead(lab, genuine, genuine))
    assert "does not list digits/1.tar" in lab.last("ota.rejected")["message"]
    assert serving(up) is None


def test_tuf_alone_refuses_a_hash_other_than_the_signed_one(lab: Lab, tmp_path: Path, genuine: bytes, impostor: bytes) -> None:
    lab.publish(genuine)
    a = lab.assignment(impostor)  # the director names the impostor's hash; the release keys signed the genuine one
    (lab.bundle_dir / f"{sha(impostor)}.tar").write_bytes(impostor)
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, a)
    assert "mix-and-match" in lab.last("ota.rejected")["message"]
    assert serving(up) is None


def test_tuf_control_installs_a_signed_release(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, lab.publish(genuine))
    assert serving(up) == sha(genuine)


def test_version_floor_alone_refuses_below_and_accepts_at_the_floor(lab: Lab, tmp_path: Path, make_bundle: Any) -> None:
    v1, v2 = make_bundle(1), make_bundle(2)
    a1 = lab.publish(v1)
    lab.publish(v2)
    lab.repo.set_floor("digits", 2, signers=lab.keys.release[:2], online=lab.keys.online)
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, a1)  # still listed and correctly signed: only the floor refuses it
    assert "below the signed version floor 2" in lab.last("ota.rejected")["message"]
    assert serving(up) is None
    install(lab, up, lab.assignment(v2))
    assert serving(up) == sha(v2)


@pytest.mark.unit
def test_version_floor_boundary_in_the_pure_check() -> None:
    a = Assignment("digits", 3, "ab" * 32, 10, "http://x")
    target = TargetInfo(path="digits/3.tar", length=10, sha256="ab" * 32, model="digits", version=3, floor=3)
    check_agreement(a, target, arch="x86_64")
    with pytest.raises(TrustError, match="below the signed version floor 4"):
        check_agreement(a, TargetInfo(**{**target.__dict__, "floor": 4}), arch="x86_64")


# --- golden vectors and their tolerance -------------------------------------------------------------


ATOL = 2.0**-10  # a power of two: expected = actual + ATOL is exact in float64


def with_golden_offset(bundle: bytes, offset: float, *, one_ulp_more: bool = False) -> bytes:
    """The bundle with golden outputs set to what the model computes plus ``offset`` (one element), tolerance ATOL;
    ``one_ulp_more`` moves that element one float64 step further away."""
    b = bundle_fmt.read(bundle)
    model = load_model(b.manifest, b.model, sha(bundle))
    d = b.manifest.to_dict()
    for vec in d["golden"]["vectors"]:
        got = model.predict(vec["inputs"])
        outputs = {name: np.asarray(arr, dtype=np.float64) for name, arr in got.items()}
        vec["outputs"] = {name: arr.tolist() for name, arr in outputs.items()}
    first = d["golden"]["vectors"][0]["outputs"]
    name = next(iter(first))
    arr = np.asarray(first[name], dtype=np.float64)
    arr.flat[0] += offset
    if one_ulp_more:
        arr.flat[0] = np.nextafter(arr.flat[0], np.inf if offset >= 0 else -np.inf)
    first[name] = arr.tolist()
    d["golden"]["atol"] = ATOL
    return bundle_fmt.pack(Manifest.from_dict(d), b.model)


@pytest.mark.parametrize(
    ("offset", "ulp", "passes"),
    [
        (0.0, False, True),
        (ATOL, False, True),
        (-ATOL, False, True),
        (ATOL, True, False),
        (-ATOL, True, False),
        (ATOL * 1.01, False, False),
    ],
)
def test_golden_tolerance_at_its_boundary(genuine: bytes, offset: float, ulp: bool, passes: bool) -> None:
    bundle = with_golden_offset(genuine, offset, one_ulp_more=ulp)
    b = bundle_fmt.read(bundle)
    model = load_model(b.manifest, b.model, sha(bundle))
    if passes:
        golden_check(model)
    else:
        with pytest.raises(ModelLoadError, match="golden vector 0"):
            golden_check(model)


def test_golden_vectors_alone_roll_back_just_past_the_tolerance(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    """Every other layer off (the bundle is what the release keys and the director sign): the health check refuses."""
    just_past = with_golden_offset(genuine, ATOL * 1.01)
    a = serve_instead(lab, just_past, just_past)
    up = bare(lab, tmp_path / "dev")
    install(lab, up, a)
    assert up.store.ota.state is State.ROLLED_BACK
    assert "golden vector 0" in lab.last("ota.rolled_back")["message"]
    assert serving(up) is None
    at_edge = with_golden_offset(genuine, ATOL)
    install(lab, up, serve_instead(lab, at_edge, at_edge))
    assert serving(up) == sha(at_edge)


# --- the fetcher's resume logic (a prefix on disk is trusted only as far as the final hash) ----------


def test_fetcher_resumes_a_prefix_with_range_and_reports_progress(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    dest = tmp_path / "download.part"
    dest.write_bytes(genuine[:1000])
    seen: list[tuple[int, int]] = []
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256, progress=lambda g, t: seen.append((g, t)))
    assert dest.read_bytes() == genuine
    assert lab.server.faults.range_requests == ["bytes=1000-"]
    assert seen and seen[-1] == (a.length, a.length) and seen[0][0] > 1000
    assert [g for g, _ in seen] == sorted({g for g, _ in seen})  # one pass: the prefix was kept, not written over


def test_fetcher_starts_again_when_the_server_ignores_range(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    lab.server.faults.ignore_range = True
    dest = tmp_path / "download.part"
    dest.write_bytes(genuine[:1000])
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert dest.read_bytes() == genuine


def test_fetcher_does_not_fetch_what_is_already_complete(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = lab.assignment(genuine)  # not served at all: any request would fail
    dest = tmp_path / "download.part"
    dest.write_bytes(genuine)
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert dest.read_bytes() == genuine


def test_fetcher_discards_a_prefix_longer_than_signed(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    dest = tmp_path / "download.part"
    dest.write_bytes(genuine + b"junk")
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert dest.read_bytes() == genuine and lab.server.faults.range_requests == []


def test_fetcher_starts_again_from_zero_when_a_kept_prefix_was_wrong(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    a = serve_instead(lab, genuine, genuine)
    dest = tmp_path / "download.part"
    dest.write_bytes(b"\0" * 1000)  # a corrupted prefix (a torn write): resuming keeps it, the hash refuses it ...
    seen: list[tuple[int, int]] = []
    Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256, progress=lambda g, t: seen.append((g, t)))
    assert dest.read_bytes() == genuine  # ... and the download starts once more from zero
    assert lab.server.faults.range_requests == ["bytes=1000-"]
    done = (a.length, a.length)  # progress is reported for both passes: the fresh start goes back below the end
    assert seen.count(done) == 2 and seen[-1] == done


def test_fetcher_refuses_wrong_bytes_after_its_one_fresh_start(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    altered = genuine[:-1] + bytes([genuine[-1] ^ 1])
    a = serve_instead(lab, genuine, altered)
    dest = tmp_path / "download.part"
    dest.write_bytes(altered[:1000])
    with pytest.raises(HashError):
        Fetcher(timeout=5.0).download(a.url, dest, length=a.length, sha256=a.sha256)
    assert not dest.exists()


def test_a_partial_download_of_another_target_is_never_resumed(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    # The assignment changed mid-download: the old target's prefix must not become the new target's first bytes
    # (it failed the hash and the device refused a good bundle until its assignment changed again).
    a = serve_instead(lab, genuine, genuine)
    up = bare(lab, tmp_path / "dev", fetcher=Fetcher(timeout=5.0))
    stale = up.store.download_path("ab" * 32)
    stale.write_bytes(b"another bundle's first bytes")
    (up.store.root / "download.part").write_bytes(b"an older agent's partial download")
    install(lab, up, a)
    assert up.store.ota.state is State.COMMITTED, lab.events
    assert serving(up) == sha(genuine)
    assert lab.server.faults.range_requests == [] and not up.store.partial_downloads()


def test_tuf_alone_refuses_a_release_signed_for_other_hardware(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    up = tuf_only(lab, tmp_path / "dev")  # the bundle itself supports any arch: only the signed target says riscv64
    install(lab, up, lab.publish(genuine, hardware={"arch": ["riscv64"]}))
    assert "wrong hardware" in lab.last("ota.rejected")["message"]
    assert serving(up) is None


def test_tuf_control_installs_a_release_signed_for_this_hardware(lab: Lab, tmp_path: Path, genuine: bytes) -> None:
    up = tuf_only(lab, tmp_path / "dev")
    install(lab, up, lab.publish(genuine, hardware={"arch": ["riscv64", "x86_64"]}))
    assert serving(up) == sha(genuine)
