"""The apns-id rule: records stored without an apns-id rely on it never changing."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from relay.core.model import APNS_ID_NAMESPACE, apns_id_for
from relay.store.history import time_ordered_hex


@given(st.text())
def test_the_apns_id_is_uuid5_of_the_notification_id(notification_id: str) -> None:
    assert apns_id_for(notification_id) == str(uuid.uuid5(APNS_ID_NAMESPACE, notification_id))


def test_a_queued_id_gets_a_version_5_uuid() -> None:
    apns_id = uuid.UUID(apns_id_for(f"03-{time_ordered_hex()}"))
    assert (apns_id.version, apns_id.variant) == (5, uuid.RFC_4122)


def test_a_known_id_keeps_its_apns_id() -> None:
    # Written down once (uuid.uuid5 of the id): what history records of this id report.
    known = "38b69218-78f0-5321-8d34-c0f88c8e9c8c"
    assert apns_id_for("0193a1b2c3d4e5f60718293a4b5c6d7e") == known
