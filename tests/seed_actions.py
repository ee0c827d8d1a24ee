"""The six callback actions of the GMS seed document (GMS API Reference, "Callback Push
Notifications for iOS": "_action" in the push), named once for every test that sends, answers or
configures them."""

from __future__ import annotations

CONFIRM_WITH_CODE = "get-dialog-user-confirmation-provide_code-true"
CONFIRM = "get-dialog-user-confirmation-provide_code-false"
START_CHAT = "get-dialog-start-chat"
CONNECT_INBOUND = "connect-inbound"
CONNECT_OUTBOUND = "connect-outbound"
WAIT_FOR_AGENT = "wait-for-agent"

SEED_ACTIONS = (
    CONFIRM_WITH_CODE,
    CONFIRM,
    START_CHAT,
    CONNECT_INBOUND,
    CONNECT_OUTBOUND,
    WAIT_FOR_AGENT,
)
