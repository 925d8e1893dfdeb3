"""Whatever arrives on the desired topic, the agent's check refuses it with a reason, never a crash."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from agent.ota.checks import RejectedError, check_desired
from shared.signing import key_id

pytestmark = pytest.mark.unit
KEY = Ed25519PrivateKey.generate().public_key()
TRUSTED = {key_id(KEY): KEY}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {
        "signed": json_values,
        "signatures": st.one_of(json_values, st.lists(st.fixed_dictionaries({"keyid": json_values, "sig": json_values}))),
    }
)


@given(
    st.one_of(
        st.binary(max_size=500),
        json_values.map(lambda v: json.dumps(v).encode()),
        envelopes.map(lambda v: json.dumps(v).encode()),
    )
)
def test_garbage_desired_state_is_rejected_with_a_reason(payload):
    with pytest.raises(RejectedError) as info:
        check_desired(payload, device_id="pi-1", trusted=TRUSTED, last_counter=0, at=0.0)
    assert str(info.value)


@pytest.mark.parametrize("constant", ["Infinity", "NaN"])
def test_infinite_values_in_a_signed_document_are_rejected_not_raised(constant):
    payload = ('{"signed": {"x": ' + constant + '}, "signatures": [{"keyid": "k", "sig": "00"}]}').encode()
    with pytest.raises(RejectedError, match="not valid JSON"):
        check_desired(payload, device_id="pi-1", trusted=TRUSTED, last_counter=0, at=0.0)
