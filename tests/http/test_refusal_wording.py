"""One voice for refusals: the same rule broken on any route is said in the same words, names
the field, and says what was received without echoing a device token or a secret."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from relay_harness import RelayHarness, running_relay

from relay.core.quoting import MAX_SHOWN_CHARS, shown, shown_token

TOKEN = "a1" * 32
SERVICE = "S1"
LIVE_ACTIVITY = {"live_activity": {"service_lifetime_s": 600}}
TOKEN_RULE = "must be 8 to 200 hex digits (0-9, a-f), an even number of them"
ALERT_KEYS = "body, loc-args, loc-key, subtitle, title, title-loc-args, title-loc-key"
LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")


@dataclass(frozen=True)
class Attempt:
    """One route given the broken rule: where, what, and the field and status it must name."""

    method: str
    path: str
    body: Any
    field: str = ""
    status: int = 400


def api(**fields: Any) -> Attempt:
    return Attempt("POST", "/v1/notifications", {"device_token": TOKEN, **fields}, "")


def batch(**fields: Any) -> Attempt:
    item = {"device_token": TOKEN, **fields}
    return Attempt("POST", "/v1/notifications:batch", {"notifications": [item]}, "")


def gms(message: Any = "hi", device_id: Any = TOKEN) -> Attempt:
    return Attempt("POST", "/gms/push", {"deviceId": device_id, "message": message}, "")


def at(attempt: Attempt, field: str, status: int = 400) -> Attempt:
    return Attempt(attempt.method, attempt.path, attempt.body, field, status)


def without(attempt: Attempt, key: str) -> Attempt:
    body = {k: v for k, v in attempt.body.items() if k != key}
    return Attempt(attempt.method, attempt.path, body, attempt.field, attempt.status)


def activity(activity_token: Any = TOKEN, service_id: str = SERVICE) -> Attempt:
    body = {"activity_token": activity_token, "device_token": TOKEN}
    return Attempt("PUT", f"/v1/activities/dev/{service_id}", body, "")


SEVEN = "abcdef1"
NOT_HEX = "a1" * 31 + "ag"

# rule broken -> the one detail every route answers it with, and the routes tried.
TABLE: list[tuple[str, str, list[Attempt]]] = [
    (
        "a 7-digit device token",
        f"{TOKEN_RULE}; received 7 hex digits",
        [
            at(api(device_token=SEVEN), "device_token"),
            at(gms(device_id=SEVEN), "deviceId"),
            at(gms(device_id=f"dev:{SEVEN}"), "deviceId"),
            at(batch(device_token=SEVEN), "notifications[0].device_token"),
            at(Attempt("GET", f"/v1/devices/dev/{SEVEN}", None, ""), "token"),
            at(Attempt("DELETE", f"/v1/devices/dev/{SEVEN}", None, ""), "token"),
            at(activity(activity_token=SEVEN), "activity_token"),
            at(
                Attempt(
                    "PUT", f"/v1/devices/dev/{TOKEN}/push-to-start", {"push_to_start_token": SEVEN}
                ),
                "push_to_start_token",
            ),
        ],
    ),
    (
        "a device token with a letter past f",
        f'{TOKEN_RULE}; received 64 characters, "g" at 64 not a hex digit',
        [
            at(api(device_token=NOT_HEX), "device_token"),
            at(gms(device_id=NOT_HEX), "deviceId"),
            at(batch(device_token=NOT_HEX), "notifications[0].device_token"),
            at(Attempt("GET", f"/v1/devices/dev/{NOT_HEX}", None, ""), "token"),
            at(activity(activity_token=NOT_HEX), "activity_token"),
        ],
    ),
    (
        "a device token of 201 digits",
        f"{TOKEN_RULE}; received 201 hex digits",
        [
            at(api(device_token="a" * 201), "device_token"),
            at(gms(device_id="a" * 201), "deviceId"),
        ],
    ),
    (
        "no device token",
        "is required",
        [
            at(without(api(), "device_token"), "device_token"),
            at(without(gms(), "deviceId"), "deviceId"),
            at(without(batch(), "notifications"), "notifications"),
            at(without(activity(), "device_token"), "device_token"),
        ],
    ),
    (
        "a device token that is not a string",
        "must be a string; received 5",
        [
            at(api(device_token=5), "device_token"),
            at(gms(device_id=5), "deviceId"),
            at(activity(activity_token=5), "activity_token"),
            at(api(service_id=5), "service_id"),
            at(gms({"_id": 5}), "message._id"),
        ],
    ),
    (
        "an app that is not configured",
        'must be a configured app (configured: dev); received "nope"',
        [
            at(api(app="nope"), "app"),
            at(gms(device_id=f"nope:{TOKEN}"), "app"),
            at(batch(app="nope"), "notifications[0].app"),
            at(Attempt("GET", f"/v1/devices/nope/{TOKEN}", None, ""), "app", 404),
            at(Attempt("GET", "/v1/apps/nope/check", None, ""), "app", 404),
            at(
                Attempt(
                    "PUT", f"/v1/activities/nope/{SERVICE}", activity().body, ""
                ),  # the activity routes' own app check
                "app",
                404,
            ),
        ],
    ),
    (
        "an empty service id",
        'must not be empty; received ""',
        [at(api(service_id=""), "service_id"), at(gms({"_id": ""}), "message._id")],
    ),
    (
        "a service id over 128 characters",
        f'must be at most 128 characters; received "{"S" * MAX_SHOWN_CHARS}…" (129 characters)',
        [
            at(api(service_id="S" * 129), "service_id"),
            at(gms({"_id": "S" * 129}), "message._id"),
            at(activity(service_id="S" * 129), "service_id"),
        ],
    ),
    (
        "an action outside its alphabet",
        "must be a non-empty string of A-Z, a-z, 0-9, '_', '.', '-' (segments separated by"
        " '/'); received \"get dialog\"",
        [
            at(api(action="get dialog"), "action"),
            at(gms({"_id": SERVICE, "_action": "get dialog"}), "message._action"),
            at(batch(action="get dialog"), "notifications[0].action"),
        ],
    ),
    (
        "an action climbing out of its service",
        "must not have a '.' or '..' segment; received \"ixn/../x\"",
        [
            at(api(action="ixn/../x"), "action"),
            at(gms({"_id": SERVICE, "_action": "ixn/../x"}), "message._action"),
        ],
    ),
    (
        "an alert title that is not a string",
        "must be a string; received 3",
        [
            at(api(alert={"title": 3}), "alert.title"),
            at(gms({"_id": SERVICE, "alert": {"title": 3}}), "message.alert.title"),
            at(gms({"_id": SERVICE, "title": 3}), "message.title"),
        ],
    ),
    (
        "an alert key Apple does not have",
        f"is not a field here (allowed: {ALERT_KEYS})",
        [
            at(api(alert={"junk": "x"}), "alert.junk"),
            at(gms({"_id": SERVICE, "alert": {"junk": "x"}}), "message.alert.junk"),
        ],
    ),
    (
        "a localisation argument that is not a string",
        "must be a string; received 3",
        [
            at(api(alert={"loc-key": "K", "loc-args": ["a", 3]}), "alert.loc-args[1]"),
            at(
                gms({"_id": SERVICE, "alert": {"loc-key": "K", "loc-args": ["a", 3]}}),
                "message.alert.loc-args[1]",
            ),
        ],
    ),
    (
        "localisation arguments that are not a list",
        'must be a list; received "a"',
        [
            at(api(alert={"loc-key": "K", "loc-args": "a"}), "alert.loc-args"),
            at(
                gms({"_id": SERVICE, "alert": {"loc-key": "K", "loc-args": "a"}}),
                "message.alert.loc-args",
            ),
        ],
    ),
    (
        "a priority APNs does not have",
        "must be 1, 5 or 10; received 7",
        [at(api(priority=7), "priority"), at(batch(priority=7), "notifications[0].priority")],
    ),
    (
        "a push expired on arrival",
        "must be in the future",
        [
            at(api(expires_at=1), "expires_at", 422),
            at(batch(expires_at=1), "notifications[0].expires_at", 422),
        ],
    ),
]


async def answer_to(relay: RelayHarness, attempt: Attempt) -> tuple[int, dict[str, Any], bytes]:
    """The problem a route answers (a batch's: its one item's), and the raw answer."""
    auth = "basic" if attempt.path == "/gms/push" else "bearer"
    if attempt.path.endswith("/check"):
        auth = "operator"  # the check route is an operator action
    status, body, _ = await relay.call(attempt.method, attempt.path, attempt.body, auth=auth)
    raw = orjson.dumps(body)
    if attempt.path.endswith(":batch") and status == 200:
        [item] = body["results"]
        return item["status"], item["problem"], raw
    return status, body, raw


async def test_the_same_rule_is_said_in_the_same_words_on_every_route(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        for rule, detail, attempts in TABLE:
            for attempt in attempts:
                where = (rule, attempt.method, attempt.path, attempt.field)
                status, problem, raw = await answer_to(relay, attempt)
                assert status == attempt.status, (where, problem)
                assert problem["field"] == attempt.field, (where, problem)
                if rule == "a push expired on arrival":  # the relay's clock is in the detail
                    assert problem["detail"].startswith(detail), (where, problem)
                else:
                    assert problem["detail"] == detail, (where, problem)
                # The structured form says the same: field, rule, received.
                first = problem["errors"][0]
                assert first["field"] == attempt.field, (where, problem)
                said = first["rule"] + (
                    f"; received {first['received']}" if "received" in first else ""
                )
                assert said == problem["detail"], (where, problem)
                # No device token goes back in full, whatever route refused it.
                assert not LONG_HEX.search(raw.decode()), (where, raw)


async def test_a_body_breaking_several_rules_lists_each_once(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        body = {"device_token": SEVEN, "badge": "5", "colour": "red", "alert": 7}
        status, problem, _ = await relay.call("POST", "/v1/notifications", body)
        assert status == 400, problem
        assert [(e["field"], e["rule"], e.get("received")) for e in problem["errors"]] == [
            ("device_token", TOKEN_RULE, "7 hex digits"),
            ("alert", "must be a string or an object", "7"),
            ("badge", "must be an integer", '"5"'),
            ("colour", problem["errors"][3]["rule"], None),
        ]
        assert problem["errors"][3]["rule"].startswith("is not a field here (allowed: action,")
        # Thousands of unknown keys: the answer stays small.
        flood = {"device_token": TOKEN, **{f"k{i}": i for i in range(5000)}}
        status, problem, _ = await relay.call("POST", "/v1/notifications", flood)
        assert status == 400
        assert len(problem["errors"]) == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (7, "7"),
        (10**80, "an integer too long to show"),
        (1.5, "1.5"),
        ("nope", '"nope"'),
        ("a\x01b", '"a\\u0001b"'),
        ({"a": 1}, "an object of 1 key"),
        ([1, 2], "a list of 2 items"),
        ("x" * 100, f'"{"x" * MAX_SHOWN_CHARS}…" (100 characters)'),
        # A device token inside any text is masked as the logs mask it, before it is cut.
        (f"hi {TOKEN}", '"hi a1a1a1a1…(64)"'),
        ("y" * 30 + TOKEN, f'"{"y" * 30}a1…" (94 characters)'),
        ("Bearer s3cr3t-t0ken", '"Bearer [redacted]"'),
    ],
)
def test_what_was_received_is_shown_bounded_and_masked(value: object, expected: str) -> None:
    assert shown(value) == expected


def test_a_refused_token_is_described_not_quoted() -> None:
    assert shown_token("ABCDEF1") == "7 hex digits"
    assert shown_token("abcd efgh") == '9 characters, " " at 5 not a hex digit'
    assert TOKEN[:16] not in shown_token(TOKEN + "z")
