"""Pure checks of the safety code, one behaviour each (the mutation run, `make mutation`, leans on them)."""

from __future__ import annotations

import pytest

from agent.ota.trust import TargetInfo, TrustError, check_agreement
from controller.core.roles import Role
from shared.messages import Assignment

pytestmark = pytest.mark.unit

SHA = "ab" * 32
A = Assignment("digits", 3, SHA, 10, "http://x")
T = TargetInfo(path="digits/3.tar", length=10, sha256=SHA, model="digits", version=3, floor=0, hardware={"arch": ["x86_64"]})


def target(**kw: object) -> TargetInfo:
    return TargetInfo(**{**T.__dict__, **kw})  # type: ignore[arg-type]


def test_agreement_accepts_the_same_release() -> None:
    check_agreement(A, T, arch="x86_64")
    check_agreement(A, target(hardware={}), arch="riscv64")  # no hardware constraint


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"model": "other"}, "lists digits/3.tar as other v3"),
        ({"version": 4}, "lists digits/3.tar as digits v4"),
        ({"sha256": "cd" * 32}, "mix-and-match"),
        ({"length": 11}, "signed 11 bytes"),
        ({"floor": 4}, "below the signed version floor 4"),
        ({"hardware": {"arch": ["aarch64"]}}, "wrong hardware"),
    ],
)
def test_agreement_refuses_each_difference(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(TrustError, match=reason):
        check_agreement(A, target(**changes), arch="x86_64")


def test_roles_are_strictly_ordered() -> None:
    order = [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN]
    for i, have in enumerate(order):
        for j, need in enumerate(order):
            assert have.allows(need) is (i >= j), (have, need)


# --- telemetry dedupe against a brute-force model ------------------------------------------


def _runs(xs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for x in sorted(xs):
        if out and out[-1][1] == x - 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def _check_sequence(seqs: list[int]) -> None:
    """Replay seqs through dedupe/gaps_left and a model that remembers every seq seen."""
    from controller.telemetry.cursors import DEDUPE_WINDOW as W
    from controller.telemetry.cursors import dedupe, gaps_left

    high: int | None = None
    bits = 0
    seen: set[int] = set()
    for seq in seqs:
        if high is None or seq > high:
            below = range(0, seq - W + 1) if high is None else range(max(0, high - W + 1), seq - W + 1)
            assert gaps_left(high, bits, seq) == _runs([x for x in below if x not in seen]), (high, seq, sorted(seen))
        else:
            assert gaps_left(high, bits, seq) == []
        verdict, high2, bits2 = dedupe(high, bits, seq)
        stale = high is not None and high - seq >= W
        want = "stale" if stale else "duplicate" if seq in seen else "new"
        assert verdict == want, (seq, high, sorted(seen))
        if verdict == "new":
            seen.add(seq)
        high, bits = high2, bits2
        expect_bits = sum(1 << (high - x) for x in seen if 0 <= high - x < W)
        assert bits == expect_bits, (seq, high)


@pytest.mark.parametrize(
    "seqs",
    [
        [62],  # the first seq at exactly the window: seq 0 falls out unseen
        [61],
        [5, 5, 4, 66, 67, 68],  # duplicates, a jump of exactly the window, then one past it
        [10, 12, 14, 200],  # several unseen seqs leave at once, and a range beyond the bitmap
        [100, 100 + 62, 100 + 62 + 63],  # jumps of exactly W and W + 1
        [0, 1, 2, 3, 70, 71, 140],
        [50, 48, 49, 47, 200, 137, 138, 139],
    ],
)
def test_dedupe_and_gaps_match_the_model_on_edge_cases(seqs: list[int]) -> None:
    _check_sequence(seqs)


def test_dedupe_and_gaps_match_the_model_on_random_sequences() -> None:
    import random

    rng = random.Random(19)
    for _ in range(300):
        base, seqs = 0, []
        for _ in range(rng.randint(1, 25)):
            base += rng.choice([0, 1, 1, 2, 5, 30, 61, 62, 63, 64, 130])
            seqs.append(max(0, base - rng.choice([0, 0, 0, 1, 3, 40, 61, 62, 70])))
        _check_sequence(seqs)


# --- signatures and the director's envelope -----------------------------------------------------


def _signed() -> tuple[dict, dict]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shared.signing import key_id, sign_document

    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    return sign_document({"a": 1}, key), {key_id(pub): pub}


def test_a_valid_signature_after_malformed_and_unknown_entries_still_verifies() -> None:
    from shared.signing import verify_document

    env, trusted = _signed()
    good = env["signatures"][0]
    junk = ["not a dict", {"keyid": 5, "sig": "00"}, {"keyid": good["keyid"], "sig": 5}, {"keyid": "f" * 64, "sig": "00"}]
    assert verify_document({"signed": env["signed"], "signatures": [*junk, good]}, trusted) == {"a": 1}


@pytest.mark.parametrize(
    ("signatures", "message"),
    [
        ([], "Signed envelope has no signatures"),
        ({"keyid": "x"}, "Signed envelope has no signatures"),
        (["x", {"keyid": 1}], "No well-formed signature in envelope"),
    ],
)
def test_envelopes_without_usable_signatures_are_refused_with_the_reason(signatures: object, message: str) -> None:
    from shared.errors import SignatureError
    from shared.signing import verify_document

    env, trusted = _signed()
    with pytest.raises(SignatureError) as err:
        verify_document({"signed": env["signed"], "signatures": signatures}, trusted)
    assert str(err.value) == message


def test_unknown_signers_are_named_by_their_first_twelve_characters() -> None:
    from shared.errors import SignatureError
    from shared.signing import verify_document

    env, trusted = _signed()
    with pytest.raises(SignatureError) as err:
        verify_document({"signed": env["signed"], "signatures": [{"keyid": "0123456789abcdef", "sig": "00"}]}, trusted)
    assert str(err.value).startswith("Signed by unknown key(s) 0123456789ab;")


def test_a_desired_state_expiring_exactly_now_is_refused() -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.ota.checks import RejectedError, check_desired
    from controller.fleet.director import Director
    from shared.signing import key_id

    d = Director(Ed25519PrivateKey.generate())
    pub = d._key.public_key()
    env = d.sign_desired("pi-1", 1, {"production": A}, 60)
    raw = json.dumps(env).encode()
    expires = env["signed"]["expires_at"]
    check_desired(raw, device_id="pi-1", trusted={key_id(pub): pub}, last_counter=0, at=expires - 0.001)
    with pytest.raises(RejectedError, match="expired"):
        check_desired(raw, device_id="pi-1", trusted={key_id(pub): pub}, last_counter=0, at=expires)


@pytest.mark.integration
def test_gaps_older_than_the_horizon_are_pruned_and_newer_ones_kept(engine) -> None:
    from sqlmodel import Session, select

    from controller.core.tables import TelemetryGap
    from controller.telemetry.cursors import prune_gaps

    with Session(engine) as s:
        for created in (10.0, 20.0, 30.0):
            s.add(TelemetryGap(device_id="d", lo=int(created), hi=int(created), created_at=created))
        s.commit()
        assert prune_gaps(s, 20.0) == 1
        s.commit()
        assert sorted(g.created_at for g in s.exec(select(TelemetryGap)).all()) == [20.0, 30.0]


@pytest.mark.integration
def test_an_api_token_is_refused_from_the_instant_it_expires(engine, monkeypatch) -> None:
    import secrets
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from fastapi import HTTPException
    from fastapi.security import HTTPAuthorizationCredentials
    from sqlmodel import Session

    from controller.api import deps
    from controller.core.security import hash_token
    from controller.core.tables import ApiToken

    now = datetime(2030, 1, 1, 12, 0, 0, 500, tzinfo=timezone.utc)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return now if tz is not None else now.replace(tzinfo=None)  # a naive "now" cannot be compared: TypeError

    monkeypatch.setattr(deps, "datetime", Clock)
    settings = SimpleNamespace(admin_token="")
    with Session(engine) as s:
        tokens = {}
        for name, expires in (("at-now", now), ("after-now", now + timedelta(microseconds=1)), ("past", now - timedelta(days=1))):
            tokens[name] = secrets.token_hex(16)
            s.add(ApiToken(principal=f"exp-{name}", role="viewer", token_hash=hash_token(tokens[name]), expires_at=expires))
        s.commit()

        def principal(name: str):  # type: ignore[no-untyped-def]
            creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=tokens[name])
            return deps.current_principal(settings, s, creds)  # type: ignore[arg-type]

        me = principal("after-now")
        assert (me.name, me.role) == ("exp-after-now", Role.VIEWER)
        for name in ("at-now", "past"):
            with pytest.raises(HTTPException) as err:
                principal(name)
            assert (err.value.status_code, err.value.detail) == (401, "API token expired: ask an admin for a new one")
            assert err.value.headers == {"WWW-Authenticate": "Bearer"}  # RFC 6750: a 401 names the scheme


def test_token_expiry_times_are_compared_as_utc_instants() -> None:
    from datetime import datetime, timedelta, timezone

    from controller.api.deps import _aware

    assert _aware(datetime(2030, 1, 1, 12)) == datetime(2030, 1, 1, 12, tzinfo=timezone.utc)  # naive: stored UTC
    assert _aware(datetime(2030, 1, 1, 12)).tzinfo is not None
    plus_one = datetime(2030, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert _aware(plus_one) == datetime(2030, 1, 1, 12, tzinfo=timezone.utc)  # an aware time keeps its instant
