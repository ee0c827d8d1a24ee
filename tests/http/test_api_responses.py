"""Real answers of every route, success and problem alike, validate against the OpenAPI document
the relay serves: its response schemas are generated from the response models, so this is the
check that the models say what the handlers send."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from relay_harness import RelayHarness, running_relay
from test_gms import chat_event

from relay.core.receipts import receipt_mac

SERVICE = "svc-42"
PROBLEM_JSON = "application/problem+json"


RECEIPT_SECRET = b"receipt-secret-" + b"0" * 32


@dataclass
class Checked:
    """Which documented statuses of each operation a real answer was validated for."""

    document: dict[str, Any]
    statuses: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """The documented operation a concrete path is served by (its template and operation)."""
        for template, methods in self.document["paths"].items():
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path) and method.lower() in methods:
                return template, methods[method.lower()]
        raise AssertionError(f"{method} {path} is not documented")

    def validate(self, method: str, path: str, answer: tuple[int, Any, Mapping[str, str]]) -> None:
        status, body, headers = answer
        template, operation = self.operation(method, path)
        documented = operation["responses"].get(str(status))
        assert documented is not None, (method, template, status, body)
        content = documented.get("content")
        if content is None:  # /metrics: text, not JSON; a receipt: no body
            assert status in (200, 204)
        else:
            ((media_type, media),) = content.items()
            received_type = headers["Content-Type"].split(";")[0]
            assert received_type == media_type, (method, template, status, received_type)
            # Refs point into the document's components: validated with the document as root.
            schema = {**media["schema"], "components": self.document["components"]}
            errors = [
                f"{'/'.join(map(str, e.absolute_path)) or 'body'}: {e.message}"
                for e in Draft202012Validator(schema).iter_errors(body)
            ]
            assert not errors, (method, template, status, errors, body)
        self.statuses.setdefault((method.lower(), template), set()).add(status)

    async def call(
        self, relay: RelayHarness, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any, Mapping[str, str]]:
        answer = await relay.call(method, path, body, **kw)
        self.validate(method, path, answer)
        return answer


def sample_path(template: str, app: str, token: str) -> str:
    samples = {"{id}": "00-" + "0" * 32, "{app}": app, "{token}": token, "{service_id}": SERVICE}
    for name, value in samples.items():
        template = template.replace(name, value)
    return template


async def test_every_route_answers_as_its_document_says(redis_url: str, state_dir: Path) -> None:
    receipts = {"secret": RECEIPT_SECRET.decode()}
    app_sections = {"live_activity": {}, "receipts": receipts}
    async with running_relay(redis_url, state_dir, app=app_sections) as relay:
        status, document, _ = await relay.call("GET", "/openapi.json")
        assert status == 200
        checked = Checked(document)
        app = relay.settings.apps[0].name
        token, activity_token, dead = await relay.device_tokens(3)
        device_path = f"/v1/devices/{app}/{token}"

        # Health, readiness, metrics, the document itself.
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await checked.call(relay, "GET", path))[0] == 200

        # GMS: pushed, nothing to push, and refused.
        status, pushed, _ = await checked.call(
            relay, "POST", "/gms/push", {"deviceId": token, "message": "hello"}, auth="basic"
        )
        assert (status, pushed["pushed"]) == (200, True), pushed
        gms = {"deviceId": token, "message": chat_event(None)}  # an empty transcript
        status, nothing, _ = await checked.call(relay, "POST", "/gms/push", gms, auth="basic")
        assert (status, nothing) == (200, {"id": None, "pushed": False})
        assert (await checked.call(relay, "POST", "/gms/push", {"deviceId": token}))[0] == 400

        # One notification: accepted, its state, and each kind of refusal.
        first = {"device_token": token, "alert": "first", "idempotency_key": "k1", "ttl": 60}
        status, accepted, _ = await checked.call(relay, "POST", "/v1/notifications", first)
        assert status == 202, accepted
        status, state, _ = await checked.call(relay, "GET", accepted["status_url"])
        assert (status, state["id"]) == (200, accepted["id"])
        refusals = [
            ({"device_token": "xyz"}, 400),
            ({**first, "alert": "second"}, 409),  # the key with another request
            ({"device_token": token, "expires_at": 1}, 422),
            ({"device_token": token, "alert": "x" * 4000, "extra": {"pad": "y" * 4000}}, 413),
        ]
        for body, expected in refusals:
            assert (await checked.call(relay, "POST", "/v1/notifications", body))[0] == expected
        # Its delivery receipt, as the phone posts it (no credential): recorded, or refused.
        receipt = {"id": accepted["id"], "mac": receipt_mac(RECEIPT_SECRET, accepted["id"])}
        for body, expected in [
            (receipt, 204),
            ({"id": accepted["id"]}, 422),
            ({**receipt, "mac": "A" * len(receipt["mac"])}, 403),
        ]:
            answer = await checked.call(relay, "POST", "/v1/receipts", body, auth=None)
            assert answer[0] == expected, answer
        problem_path = sample_path("/v1/notifications/{id}", app, token)
        assert (await checked.call(relay, "GET", problem_path))[0] == 404

        # A batch answered per item, and one refused whole.
        items = [first, {**first, "alert": "second"}, {"device_token": "xyz"}, {"alert": "x"}]
        status, batch, _ = await checked.call(
            relay, "POST", "/v1/notifications:batch", {"notifications": items}
        )
        assert (status, batch["accepted"], batch["rejected"]) == (200, 1, 3), batch
        empty: dict[str, list[Any]] = {"notifications": []}
        assert (await checked.call(relay, "POST", "/v1/notifications:batch", empty))[0] == 400

        # A dead token: refused on push, and its device record says why.
        await relay.control.unregister(dead)
        await relay.wait_state(await relay.notify(device_token=dead, alert="a"), {"failed"})
        body = {"device_token": dead, "alert": "b"}
        assert (await checked.call(relay, "POST", "/v1/notifications", body))[0] == 410
        status, device, _ = await checked.call(relay, "GET", f"/v1/devices/{app}/{dead}")
        assert (status, device["dead"] is not None) == (200, True), device

        # Devices and the queue.
        assert (await checked.call(relay, "GET", device_path))[0] == 200
        assert (await checked.call(relay, "DELETE", device_path))[0] == 200
        assert (await checked.call(relay, "GET", f"/v1/devices/{app}/xyz"))[0] == 400
        assert (await checked.call(relay, "GET", f"/v1/devices/nope/{token}"))[0] == 404
        assert (await checked.call(relay, "DELETE", f"/v1/devices/nope/{token}"))[0] == 404
        assert (await checked.call(relay, "GET", "/v1/queue"))[0] == 200

        # Live Activities.
        activity = f"/v1/activities/{app}/{SERVICE}"
        register = {"activity_token": activity_token, "device_token": token}
        # Refused until GMS has pushed the service to that device; then registered.
        assert (await checked.call(relay, "PUT", activity, register))[0] == 403
        callback = {"deviceId": token, "message": {"_id": SERVICE, "_action": "wait-for-agent"}}
        assert (await checked.call(relay, "POST", "/gms/push", callback, auth="basic"))[0] == 200
        assert (await checked.call(relay, "PUT", activity, register))[0] == 200
        assert (await checked.call(relay, "PUT", activity, {"activity_token": "x"}))[0] == 400
        mine = {"device_token": token}
        assert (await checked.call(relay, "DELETE", activity, params=mine))[0] == 200
        assert (await checked.call(relay, "DELETE", activity))[0] == 400  # whose device?
        push_to_start = f"{device_path}/push-to-start"
        body = {"push_to_start_token": activity_token}
        assert (await checked.call(relay, "PUT", push_to_start, body))[0] == 200
        assert (await checked.call(relay, "PUT", push_to_start, {}))[0] == 400
        assert (await checked.call(relay, "DELETE", push_to_start))[0] == 200

        # The credential check of one app.
        check = f"/v1/apps/{app}/check"
        status, verdict, _ = await checked.call(relay, "GET", check, auth="operator")
        assert (status, verdict["app"]) == (200, app), verdict
        assert (await checked.call(relay, "GET", check))[0] == 403  # not an operator
        assert (await checked.call(relay, "GET", "/v1/apps/nope/check", auth="operator"))[0] == 404

        # Draining: not ready, and pushes refused.
        relay.state.draining = True
        assert (await checked.call(relay, "GET", "/readyz"))[0] == 503
        assert (await checked.call(relay, "POST", "/v1/notifications", first))[0] == 503
        batch_of_one = {"notifications": [first]}
        answer = await checked.call(relay, "POST", "/v1/notifications:batch", batch_of_one)
        assert answer[0] == 503
        gms = {"deviceId": token, "message": "hello"}
        assert (await checked.call(relay, "POST", "/gms/push", gms, auth="basic"))[0] == 503
        relay.state.draining = False

        # Without a credential, every secured route: 401.
        for template, methods in document["paths"].items():
            for method, operation in methods.items():
                if "security" in operation:
                    path = sample_path(template, app, token)
                    assert (await checked.call(relay, method.upper(), path, auth=None))[0] == 401

    # Every operation was seen succeeding, and every one that documents a problem answered one.
    for template, methods in document["paths"].items():
        for method, operation in methods.items():
            seen = checked.statuses.get((method, template), set())
            assert any(s < 300 for s in seen), (method, template, seen)
            problems = {
                int(status)
                for status, answer in operation["responses"].items()
                if PROBLEM_JSON in answer.get("content", {})
            }
            if problems:
                assert seen & problems, (method, template, seen)
