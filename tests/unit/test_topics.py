import pytest

from shared.errors import TopicError
from shared.topics import Kind, Topic, device_topic, fleet_filter

pytestmark = pytest.mark.unit


def test_build_and_parse_round_trip():
    t = Topic("pi-0001", Kind.STATUS)
    assert str(t) == "edgefleet/v1/dev/pi-0001/status"
    assert Topic.parse(str(t)) == t


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "edgefleet/v1/dev/pi/unknown",
        "edgefleet/v2/dev/pi/status",
        "edgefleet/v1/dev/+/status",
        "edgefleet/v1/dev/a/b/status",
        "edgefleet/v1/dev//status",
        "other/v1/dev/pi/status",
    ],
)
def test_malformed_topics_are_rejected_with_a_clear_error(topic):
    with pytest.raises(TopicError, match="Invalid"):
        Topic.parse(topic)


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "#", "-lead", "x" * 65, "ü"])
def test_invalid_device_ids(device_id):
    with pytest.raises(TopicError, match="Invalid device_id"):
        device_topic(device_id, Kind.DESIRED)


def test_fleet_filters():
    assert fleet_filter(Kind.TELEMETRY) == "edgefleet/v1/dev/+/telemetry"
    assert fleet_filter(Kind.TELEMETRY, shared=True) == "$share/controllers/edgefleet/v1/dev/+/telemetry"
