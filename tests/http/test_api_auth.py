"""API authentication: every route but health needs a credential, scoped credentials see one app."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from relay_harness import API_TOKEN, BASIC, RelayHarness, relay_document, running_relay
from test_api_input import assert_problem, limited_server, snapshot

from relay.config.schema import ConfigError, Settings
from relay.http.app import openapi_document
from relay.http.auth import Credentials
from relay.http.limits import TokenBucket
from relay.http.state import RelayState

TOKEN = "b2" * 32
DEV_TOKEN = "dev-scoped-token"
OTHER_TOKEN = "other-scoped-token"
OTHER_BASIC = ("other-gms", "other-secret")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


WRONG_CREDENTIALS = [
    None,
    "Bearer wrong-token",
    f"Bearer {API_TOKEN}x",
    "Bearer ",
    basic(BASIC[0], "wrong"),
    basic(*BASIC) + "!",  # not base64
    f"Basic {base64.b64encode(API_TOKEN.encode()).decode()}",  # a token offered as Basic
    f"Token {API_TOKEN}",
]


def secured_operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation that needs a credential, with sample
    path parameters."""
    samples = {"{id}": "00-" + "0" * 32, "{app}": "dev", "{token}": TOKEN}
    operations = []
    for template, methods in openapi_document()["paths"].items():
        path = template
        for name, value in samples.items():
            path = path.replace(name, value)
        operations += [
            (method.upper(), path)
            for method, operation in methods.items()
            if "security" in operation
        ]
    return operations


async def call_as(
    relay: RelayHarness, authorization: str | None, method: str, path: str, body: Any = None
) -> tuple[int, Any, Mapping[str, str]]:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await relay.call(method, path, body, auth=None, headers=headers)


async def test_every_route_but_health_needs_a_credential(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    operations = secured_operations()
    assert len(operations) >= 8
    async with running_relay(redis_url, state_dir) as relay:
        before = await snapshot(redis)
        for method, path in operations:
            body = {"device_token": TOKEN} if method == "POST" else None
            for authorization in WRONG_CREDENTIALS:
                answer = await call_as(relay, authorization, method, path, body)
                assert_problem(answer, 401, "Authorization", "credentials")
                challenge = answer[2]["WWW-Authenticate"]
                assert "Bearer" in challenge
                assert "Basic" in challenge
        # Unknown routes too: a stranger learns nothing about what is served.
        answer = await call_as(relay, None, "GET", "/v1/secret-things")
        assert_problem(answer, 401, "Authorization", "credentials")
        assert await snapshot(redis) == before
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _, _ = await call_as(relay, None, "GET", path)
            assert status == 200, path
        for authorization in (f"Bearer {API_TOKEN}", f"bearer  {API_TOKEN}", basic(*BASIC)):
            status, _, _ = await call_as(relay, authorization, "GET", "/v1/queue")
            assert status == 200, authorization


async def test_wrong_credentials_do_not_reveal_what_exists(redis_url: str, state_dir: Path) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        known = await relay.notify(device_token=TOKEN, alert="a")
        await relay.control.unregister(TOKEN)
        await relay.wait_state(known, {"delivered", "failed"})
        unknown = "00-" + "f" * 32
        for authorization in WRONG_CREDENTIALS:
            answers = []
            for path in (
                f"/v1/notifications/{known}",
                f"/v1/notifications/{unknown}",
                f"/v1/devices/dev/{TOKEN}",
                f"/v1/devices/dev/{'c3' * 32}",
                f"/v1/devices/nope/{TOKEN}",
            ):
                status, body, headers = await call_as(relay, authorization, "GET", path)
                answers.append((status, body, headers["WWW-Authenticate"]))
            assert all(answer == answers[0] for answer in answers), answers


async def test_request_rate_per_credential_is_429_with_retry_after(
    redis_url: str, state_dir: Path
) -> None:
    rate = {"auth": {"requests_per_second": 1, "burst": 3}}
    async with running_relay(redis_url, state_dir, **rate) as relay:
        statuses = [(await relay.call("GET", "/v1/queue"))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        answer = await relay.call("GET", "/v1/queue")
        assert_problem(answer, 429, "Authorization", "1 requests per second")
        assert answer[2]["Retry-After"] == "1"
        # Each credential has its own bucket, and health is never limited.
        assert (await relay.call("GET", "/v1/queue", auth="basic"))[0] == 200
        assert (await relay.call("GET", "/healthz", auth=None))[0] == 200


def two_app_settings(relay: RelayHarness, app: dict[str, Any] | None = None) -> Settings:
    """The harness's settings with a second app, and credentials scoped to each app; `app`
    overrides sections of both apps."""
    document = relay_document(str(relay.settings.redis.url), relay.sim, app=app or {})
    other = {**document["apps"][0], "name": "other", "topic": "com.example.other"}
    other["default"] = False
    document["apps"].append(other)
    document["auth"]["scoped"] = [
        {"token": DEV_TOKEN, "apps": ["dev"]},
        {"token": OTHER_TOKEN, "apps": ["other"]},
        {"basic": ":".join(OTHER_BASIC), "apps": ["other"]},
    ]
    return Settings.model_validate(document)


@contextlib.asynccontextmanager
async def two_app_relay(
    relay: RelayHarness, app: dict[str, Any] | None = None
) -> AsyncIterator[str]:
    """An api on the harness's queue that knows a second app "other" (never delivered to:
    the tests only ever queue for "dev")."""
    settings = two_app_settings(relay, app)
    state = RelayState(settings, relay.queue, Credentials.from_settings(settings))
    async with limited_server(state) as url:
        yield url


async def scoped_call(
    session: aiohttp.ClientSession,
    url: str,
    authorization: str,
    method: str,
    path: str,
    body: Any = None,
) -> tuple[int, Any, Mapping[str, str]]:
    headers = {"Authorization": authorization}
    async with session.request(method, url + path, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_scoped_credentials_act_only_for_their_apps(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay, two_app_relay(relay) as url:
        session = relay.session
        dev, other = f"Bearer {DEV_TOKEN}", f"Bearer {OTHER_TOKEN}"
        device_token = await relay.device_token()

        # A credential for one app pushes to it without naming it.
        status, accepted, _ = await scoped_call(
            session,
            url,
            dev,
            "POST",
            "/v1/notifications",
            {"device_token": device_token, "alert": "a"},
        )
        assert status == 202, accepted
        await relay.wait_state(accepted["id"], {"delivered"})
        status, seen, _ = await scoped_call(session, url, dev, "GET", accepted["status_url"])
        assert (status, seen["app"]) == (200, "dev")

        before = await snapshot(redis)
        # Another app's notification is answered exactly as one that does not exist.
        for authorization in (other, basic(*OTHER_BASIC)):
            hidden = await scoped_call(session, url, authorization, "GET", accepted["status_url"])
            missing = await scoped_call(
                session, url, authorization, "GET", "/v1/notifications/00-" + "0" * 32
            )
            assert_problem(hidden, 404, "id", "no such notification")
            assert hidden[:2] == missing[:2]

            body = {"device_token": device_token, "app": "dev", "alert": "b"}
            answer = await scoped_call(
                session, url, authorization, "POST", "/v1/notifications", body
            )
            assert_problem(answer, 403, "app", "may not act for app 'dev'")
            gms = {"deviceId": f"dev:{device_token}", "message": "c"}
            answer = await scoped_call(session, url, authorization, "POST", "/gms/push", gms)
            assert_problem(answer, 403, "deviceId", "may not act for app 'dev'")
            for method in ("GET", "DELETE"):
                answer = await scoped_call(
                    session, url, authorization, method, f"/v1/devices/dev/{device_token}"
                )
                assert_problem(answer, 403, "app", "may not act for app 'dev'")
            answer = await scoped_call(session, url, authorization, "GET", "/v1/queue")
            assert_problem(answer, 403, "Authorization", "every app")

            # An unknown app gets the answer another's app gets: no configured name leaks.
            for method, path, template in (
                ("POST", "/v1/notifications", {"device_token": TOKEN, "app": "{app}"}),
                ("POST", "/gms/push", {"deviceId": f"{{app}}:{TOKEN}", "message": "d"}),
                ("GET", f"/v1/devices/{{app}}/{TOKEN}", None),
                ("DELETE", f"/v1/devices/{{app}}/{TOKEN}", None),
            ):
                answers = []
                for app in ("dev", "nope"):
                    filled = orjson.loads(orjson.dumps(template).replace(b"{app}", app.encode()))
                    status, problem, _ = await scoped_call(
                        session, url, authorization, method, path.format(app=app), filled
                    )
                    assert "'dev'" not in problem["detail"].replace(f"'{app}'", "")
                    answers.append((status, problem["detail"].replace(f"'{app}'", "'X'")))
                assert answers[0] == answers[1] == (403, answers[0][1]), answers
                assert "other" in answers[0][1]  # its own app it may be told

            batch = {"notifications": [{"device_token": device_token, "app": "dev"}]}
            status, results, _ = await scoped_call(
                session, url, authorization, "POST", "/v1/notifications:batch", batch
            )
            assert status == 200
            [item] = results["results"]
            assert item["status"] == 403
            assert item["problem"]["field"] == "notifications[0].app"
        assert await snapshot(redis) == before

        # The unscoped token still sees every app's.
        status, _, _ = await scoped_call(
            session, url, f"Bearer {API_TOKEN}", "GET", accepted["status_url"]
        )
        assert status == 200


def test_scoped_credentials_must_name_configured_apps(tmp_path: Path) -> None:
    document: dict[str, Any] = {"auth": {"scoped": [{"token": "t", "apps": ["ghost"]}]}}
    with pytest.raises(ConfigError, match="ghost"):
        Credentials.from_settings(Settings.model_validate(document))
    for bad in (
        {"apps": ["a"]},
        {"token": "t", "basic": "u:p", "apps": ["a"]},
        {"token": "", "apps": ["a"]},
        {"basic": "no-colon", "apps": ["a"]},
        {"token": "t", "apps": []},
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate({"auth": {"scoped": [bad]}})


def test_credentials_grant_by_scheme_and_secret() -> None:
    settings = Settings.model_validate(
        {"auth": {"api_tokens": ["tok-1", "tok-2"], "basic": ["gms:pw"]}}
    )
    credentials = Credentials.from_settings(settings)
    assert credentials.grant_for("Bearer tok-2") is not None
    assert credentials.grant_for("BEARER tok-1") is not None
    assert credentials.grant_for(basic("gms", "pw")) is not None
    for refused in ("Bearer tok-3", "Bearer tok", basic("gms", "pw2"), "Basic tok-1", "", None):
        assert credentials.grant_for(refused) is None
    # Each credential gets its own name, so each has its own request rate.
    grants = [
        credentials.grant_for(h) for h in ("Bearer tok-1", "Bearer tok-2", basic("gms", "pw"))
    ]
    assert len({grant.name for grant in grants if grant is not None}) == 3


def test_token_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket(rate=2, capacity=2, tokens=2, updated_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert [bucket.take(100.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(100.0) > 0
