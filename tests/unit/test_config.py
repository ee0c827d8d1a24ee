"""Settings: file + environment loading, validation messages, apps, alert templates, the example."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from seed_actions import SEED_ACTIONS

from relay.config.loading import env_override_names, load_settings
from relay.config.schema import ConfigError, Settings
from relay.core.alerts import DEFAULT_ALERTS, GENERIC_ALERT, AlertTemplate
from relay.core.app_profile import AppProfile
from relay.core.model import InvalidInput
from relay.core.policy import RetryPolicy
from relay.credentials.files import load_settings as load_checked_settings
from relay_devkit.apns_sim.push_certificates import PushCertificateAuthority

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "relay.example.yaml"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "AuthKey_ABCDE12345.p8"
    path.write_text("-----BEGIN PRIVATE KEY-----\n")
    return path


def app_entry(name: str = "demo", key_file: Path | str = "key.p8", **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "topic": "com.example.demo",
        "environment": "sandbox",
        "auth": {
            "token": {"key_file": str(key_file), "key_id": "ABCDE12345", "team_id": "TEAM123456"}
        },
        **more,
    }


def write_config(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return caught.value.problems


def test_no_file_and_no_environment_gives_the_documented_defaults() -> None:
    settings = load_settings(env={})
    assert settings.redis.url is None
    assert settings.redis.shards == 16
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.http.max_body_bytes == 1024 * 1024
    assert settings.queue.max_per_device == 100
    assert settings.queue.max_ttl_seconds == 30 * 86400
    assert settings.retry.policy() == RetryPolicy(base_ms=500, cap_ms=60_000, max_attempts=8)
    assert settings.delivery.request_timeout_seconds == 10.0
    assert settings.logging.format == "auto"
    assert settings.apps == []


def test_relay_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"queue": {"max_per_device": 7}})
    assert load_settings(env={"RELAY_CONFIG": str(path)}).queue.max_per_device == 7


def test_path_argument_wins_over_relay_config(tmp_path: Path) -> None:
    chosen = write_config(tmp_path, {"queue": {"max_per_device": 7}})
    other = tmp_path / "other.yaml"
    other.write_text("queue: {max_per_device: 9}\n")
    assert load_settings(chosen, env={"RELAY_CONFIG": str(other)}).queue.max_per_device == 7


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_settings(path, env={}) == load_settings(env={})


@pytest.mark.parametrize(
    ("variable", "value", "section", "key", "expected"),
    [
        ("RELAY_REDIS_URL", "redis://db:6379/2", "redis", "url", "redis://db:6379/2"),
        ("RELAY_REDIS_SHARDS", "4", "redis", "shards", 4),
        ("RELAY_HTTP_HOST", "0.0.0.0", "http", "host", "0.0.0.0"),
        ("RELAY_HTTP_PORT", "9090", "http", "port", 9090),
        ("RELAY_HTTP_RECEIPTS_PORT", "", "http", "receipts_port", None),
        ("RELAY_QUEUE_MAX_PER_DEVICE", "5", "queue", "max_per_device", 5),
        ("RELAY_QUEUE_SUPERSEDE", "false", "queue", "supersede", False),
        ("RELAY_RETRY_BASE_MS", "250", "retry", "base_ms", 250),
        (
            "RELAY_DELIVERY_REQUEST_TIMEOUT_SECONDS",
            "2.5",
            "delivery",
            "request_timeout_seconds",
            2.5,
        ),
        ("RELAY_LOGGING_FORMAT", "JSON", "logging", "format", "json"),
        ("RELAY_LOGGING_LEVEL", "debug", "logging", "level", "debug"),
    ],
)
def test_environment_overrides_the_file(
    tmp_path: Path, variable: str, value: str, section: str, key: str, expected: object
) -> None:
    path = write_config(
        tmp_path,
        {
            "redis": {"url": "redis://file:6379/0", "shards": 8},
            "http": {"host": "127.0.0.2", "port": 8000, "receipts_port": 9000},
            "queue": {"max_per_device": 50, "supersede": True},
            "retry": {"base_ms": 100},
            "delivery": {"request_timeout_seconds": 1.0},
            "logging": {"format": "console", "level": "warning"},
        },
    )
    settings = load_settings(path, env={variable: value})
    assert getattr(getattr(settings, section), key) == expected


def test_every_scalar_of_the_plain_sections_has_an_override() -> None:
    names = env_override_names()
    assert names["RELAY_QUEUE_DEAD_TOKEN_TTL_SECONDS"] == ("queue", "dead_token_ttl_seconds")
    assert names["RELAY_DELIVERY_PAUSE_PROBE_SECONDS"] == ("delivery", "pause_probe_seconds")
    assert names["RELAY_INGEST_SPOOL_DIR"] == ("ingest", "spool_dir")
    assert names["RELAY_CIRCUIT_FAILURE_THRESHOLD"] == ("circuit", "failure_threshold")
    poll = names["RELAY_DELIVERY_CREDENTIAL_POLL_SECONDS"]
    assert poll == ("delivery", "credential_poll_seconds")
    assert names["RELAY_REDIS_MEMORY_WATERMARK"] == ("redis", "memory_watermark")
    # redis, http, queue, ingest, retry, delivery, circuit, logging
    assert len(names) == 9 + 7 + 8 + 4 + 3 + 5 + 4 + 2
    assert names["RELAY_HTTP_TRUSTED_PROXIES"] == ("http", "trusted_proxies")
    proxies = load_settings(env={"RELAY_HTTP_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert [str(n) for n in proxies.http.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_empty_redis_url_means_embedded() -> None:
    assert load_settings(env={"RELAY_REDIS_URL": ""}).redis.url is None


def test_plain_redis_url_is_a_fallback_only(tmp_path: Path) -> None:
    assert load_settings(env={"REDIS_URL": "redis://r:1/0"}).redis.url == "redis://r:1/0"
    path = write_config(tmp_path, {"redis": {"url": "redis://file:1/0"}})
    assert load_settings(path, env={"REDIS_URL": "redis://r:1/0"}).redis.url == "redis://file:1/0"
    both = {"REDIS_URL": "redis://r:1/0", "RELAY_REDIS_URL": "redis://relay:1/0"}
    assert load_settings(env=both).redis.url == "redis://relay:1/0"


def test_auth_comma_lists_from_the_environment_stay_secret() -> None:
    settings = load_settings(
        env={"RELAY_API_TOKENS": "tok1, tok2,", "RELAY_BASIC_AUTH": "gms:pa:ss,ops:x"}
    )
    assert [t.get_secret_value() for t in settings.auth.api_tokens] == ["tok1", "tok2"]
    users = settings.auth.basic_users()
    assert {u: p.get_secret_value() for u, p in users.items()} == {"gms": "pa:ss", "ops": "x"}
    printed = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("tok1", "tok2", "pa:ss"):
        assert secret not in printed


def test_a_bad_secret_is_named_but_not_printed() -> None:
    problems = problems_of(None, {"RELAY_BASIC_AUTH": "hunter2-without-user"})
    assert problems == [
        'auth.basic: each entry must be "user:password" with a non-empty user '
        "[env RELAY_BASIC_AUTH]"
    ]


def test_a_redis_url_is_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"redis": {"url": ["redis://:s3cret@db:6379/0"]}})
    (problem,) = problems_of(path)
    assert problem.startswith("redis.url: ")
    assert "s3cret" not in problem


def test_errors_name_each_key_its_rule_and_its_source(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "queue": {"max_per_device": -1, "max_pendin": 3},
            "http": {"port": "eighty"},
            "apps": [{"name": "demo", "environment": "sandbox", "auth": {"token": None}}],
        },
    )
    problems = problems_of(path, {"RELAY_RETRY_MAX_ATTEMPTS": "0"})
    source = f"[file {path}]"
    assert f"queue.max_per_device: must be > 0 (got -1) {source}" in problems
    assert f"http.port: must be an integer (got 'eighty') {source}" in problems
    assert f"apps[0].topic: field required {source}" in problems
    assert "retry.max_attempts: must be > 0 (got '0') [env RELAY_RETRY_MAX_ATTEMPTS]" in problems
    unknown = next(p for p in problems if p.startswith("queue.max_pendin"))
    assert "unknown key (allowed: max_per_device, max_pending," in unknown
    assert "apps[0].auth: give exactly one of token: {...} or certificate: {...}" in "\n".join(
        problems
    )


def test_a_typo_in_an_environment_override_is_an_error() -> None:
    (problem,) = problems_of(None, {"RELAY_QUEUE_MAX_PER_DEVIC": "5", "RELAY_OTHER": "x"})
    assert problem.startswith("env RELAY_QUEUE_MAX_PER_DEVIC: unknown setting (known: ")
    assert "RELAY_QUEUE_MAX_PER_DEVICE" in problem


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("queue: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping of sections (got list)"),
        ("queue: 5\n", "queue: input should be a valid dictionary"),
    ],
)
def test_unusable_files_are_refused_with_the_reason(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(content)
    assert expected in "\n".join(problems_of(path))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "absent.yaml")
    assert "absent.yaml: cannot read" in problem


def test_queue_default_ttl_cannot_exceed_max() -> None:
    (problem,) = problems_of(
        None, {"RELAY_QUEUE_DEFAULT_TTL_SECONDS": "100", "RELAY_QUEUE_MAX_TTL_SECONDS": "10"}
    )
    assert "default_ttl_seconds (100) must not exceed max_ttl_seconds (10)" in problem


def test_a_relative_key_file_is_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.p8").write_text("key")
    path = write_config(tmp_path, {"apps": [app_entry(key_file="keys/k.p8")]})
    app = load_settings(path, env={}).app(None)
    assert app.auth.token is not None
    assert app.auth.token.key_file == tmp_path / "keys" / "k.p8"


def test_a_missing_key_file_is_caught_at_load_time(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"apps": [app_entry(key_file="nowhere.p8")]})
    (problem,) = problems_of(path)
    assert problem.startswith(f"apps[0].auth.token.key_file: no such file: {tmp_path}/nowhere.p8")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"name": "Demo App"}, "apps[0].name: must match ^[a-z0-9][a-z0-9_-]*$ (got 'Demo App')"),
        ({"topic": "com example"}, "apps[0].topic: must match"),
        ({"environment": "dev"}, "apps[0].environment: must be one of 'production' or 'sandbox'"),
        ({"priority": 7}, "apps[0].priority: must be one of 1, 5 or 10 (got 7)"),
        ({"push_type": "banner"}, "apps[0].push_type: must be one of alert, background,"),
        ({"message_encoding": "xml"}, "apps[0].message_encoding: must be one of 'object' or"),
        ({"chat": {"typing": "loud"}}, "apps[0].chat.typing: must be one of 'none' or"),
        ({"max_connections": 0}, "apps[0].max_connections: must be > 0 (got 0)"),
        ({"endpoint": {"host": "h", "port": 0}}, "apps[0].endpoint.port: must be > 0 (got 0)"),
        ({"alerts": {"x": {"body": "{0}"}}}, None),
        ({"alerts": {"x": {"body": "hi {a.b}"}}}, "apps[0].alerts.x.body: bad placeholder {a.b}"),
        ({"alerts": {"x": {"body": "hi {a!r}"}}}, "apps[0].alerts.x.body: bad placeholder {a}"),
        ({"alerts": {"x": {"text": "hi"}}}, "apps[0].alerts.x.text: unknown key (allowed: title,"),
    ],
)
def test_app_fields_are_validated(
    tmp_path: Path, key_file: Path, change: dict[str, Any], expected: str | None
) -> None:
    path = write_config(tmp_path, {"apps": [app_entry(key_file=key_file, **change)]})
    if expected is None:
        load_settings(path, env={})
        return
    assert any(p.startswith(expected) for p in problems_of(path)), problems_of(path)


def test_key_and_team_ids_are_ten_upper_case_alphanumerics(tmp_path: Path, key_file: Path) -> None:
    entry = app_entry(key_file=key_file)
    entry["auth"]["token"].update(key_id="abcde12345", team_id="TEAM12345")
    problems = problems_of(write_config(tmp_path, {"apps": [entry]}))
    assert [p.split(":")[0] for p in problems] == [
        "apps[0].auth.token.key_id",
        "apps[0].auth.token.team_id",
    ]


def test_certificate_credentials_are_read_at_start_up(tmp_path: Path) -> None:
    # Loading and checking real certificates: tests/unit/test_client_certificate.py.
    (tmp_path / "cert.pem").write_text("pem")
    entry = app_entry()
    entry["auth"] = {"certificate": {"cert_file": "cert.pem"}}
    with pytest.raises(ConfigError) as caught:
        load_checked_settings(write_config(tmp_path, {"apps": [entry]}), env={})
    assert caught.value.problems[0].startswith(
        f"apps[0]: auth.certificate: {tmp_path / 'cert.pem'}: no PEM certificate"
    )


def test_app_names_are_unique_and_one_default_at_most(tmp_path: Path, key_file: Path) -> None:
    twins = [app_entry("a", key_file), app_entry("a", key_file)]
    assert problems_of(write_config(tmp_path, {"apps": twins})) == [
        f"apps: names must be unique (repeated: a) [file {tmp_path}/relay.yaml]"
    ]
    two_defaults = [app_entry("a", key_file, default=True), app_entry("b", key_file, default=True)]
    (problem,) = problems_of(write_config(tmp_path, {"apps": two_defaults}))
    assert problem.startswith("apps: at most one app may be default (got a, b)")


def test_app_lookup(tmp_path: Path, key_file: Path) -> None:
    one = load_settings(write_config(tmp_path, {"apps": [app_entry("a", key_file)]}), env={})
    assert one.app(None).name == "a"  # the only app is the default

    apps = [app_entry("a", key_file), app_entry("b", key_file, default=True)]
    marked = load_settings(write_config(tmp_path, {"apps": apps}), env={})
    assert marked.app(None).name == "b"
    assert marked.app("a").name == "a"
    with pytest.raises(InvalidInput) as unknown:
        marked.app("c")
    assert unknown.value.detail == 'must be a configured app (configured: a, b); received "c"'

    apps = [app_entry("a", key_file), app_entry("b", key_file)]
    unmarked = load_settings(write_config(tmp_path, {"apps": apps}), env={})
    with pytest.raises(InvalidInput, match="no default app is configured"):
        unmarked.app(None)


def test_alert_templates_come_from_the_app_then_the_defaults(
    tmp_path: Path, key_file: Path
) -> None:
    own = {"wait-for-agent": {"title": "Hold on, {name}", "body": "Ticket {_id}: {missing}."}}
    path = write_config(tmp_path, {"apps": [app_entry(key_file=key_file, alerts=own)]})
    app = load_settings(path, env={}).app(None).profile()
    rendered = app.alert_template("wait-for-agent").render({"name": "Ann", "_id": "S1"})
    assert (rendered.title, rendered.body) == ("Hold on, Ann", "Ticket S1: .")
    assert app.alert_template("connect-outbound") == DEFAULT_ALERTS["connect-outbound"]
    assert app.alert_template("some-new-action") is GENERIC_ALERT
    assert app.alert_template(None) is GENERIC_ALERT


def test_an_apps_profile_is_what_building_its_pushes_needs(tmp_path: Path, key_file: Path) -> None:
    own = {"wait-for-agent": {"body": "Ticket {_id}"}}
    entry = app_entry(
        key_file=key_file,
        alerts=own,
        sound=None,
        priority=5,
        push_type="background",
        message_encoding="string",
        chat={
            "typing": "background",
            "action": "chat-line",
            "ttl_by_event": {"typing": 5},
            "message_fields": ["lineType", "transcriptPosition"],
        },
        ttl_by_action={"wait-for-agent": 600},
    )
    app = load_settings(write_config(tmp_path, {"apps": [entry]}), env={}).app(None)
    assert app.profile() == AppProfile(
        name="demo",
        push_type="background",
        priority=5,
        sound=None,
        message_encoding="string",
        alerts={"wait-for-agent": AlertTemplate(body="Ticket {_id}")},
        chat_typing="background",
        chat_action="chat-line",
        ttl_by_action={
            "get-dialog-user-confirmation-provide_code-true": 30,
            "get-dialog-user-confirmation-provide_code-false": 30,
            "wait-for-agent": 600,
        },
        chat_ttl_by_event={"typing": 5},
        chat_message_fields=("lineType", "transcriptPosition"),
    )


def test_defaults_cover_the_six_seed_actions_with_english_text() -> None:
    assert set(DEFAULT_ALERTS) == set(SEED_ACTIONS)
    confirm = DEFAULT_ALERTS["get-dialog-user-confirmation-provide_code-true"]
    assert (confirm.title, confirm.body) == (
        "An agent is available",
        "Tap to confirm you are ready to talk.",
    )
    assert all(t.title and t.body for t in DEFAULT_ALERTS.values())
    assert GENERIC_ALERT.body == "You have a new notification."


def test_escaped_braces_render_literally() -> None:
    assert AlertTemplate(body="{{literal}} {x}").render({"x": 1}).body == "{literal} 1"


def _keys_of(model: type[BaseModel]) -> set[str]:
    """Every key name the settings tree accepts."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for candidate in _models_in(field.annotation):
            keys |= _keys_of(candidate)
    return keys


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_the_example_documents_every_key_with_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    documented: set[str] = set()
    for index, line in enumerate(lines):
        match = re.match(r"\s*(?:- )?([a-z0-9_]+):", line)
        if match and index and lines[index - 1].strip().startswith("#"):
            documented.add(match.group(1))
    assert _keys_of(Settings) - documented == set()


def test_the_example_loads_and_shows_the_defaults(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "relay.yaml")
    (tmp_path / "keys").mkdir()
    for name in ("AuthKey_ABCDE12345.p8", "sim-ca.pem"):
        (tmp_path / "keys" / name).write_text("placeholder")
    certificate = PushCertificateAuthority.create().issue("com.example.gms.demo", voip=True)
    (tmp_path / "keys" / "demo-sandbox.p12").write_bytes(certificate.pkcs12(b"p12-password"))
    cert_pem, key_pem = certificate.pem().split(b"-----BEGIN PRIVATE KEY")
    (tmp_path / "keys" / "demo-sandbox.pem").write_bytes(cert_pem)
    (tmp_path / "keys" / "demo-sandbox-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY" + key_pem)
    settings = load_settings(
        tmp_path / "relay.yaml",
        env={"DEMO_SANDBOX_P12_PASSWORD": "p12-password", "DEMO_RECEIPTS_SECRET": "r" * 64},
    )
    defaults = Settings()
    for section in ("http", "queue", "retry", "delivery", "logging"):
        assert getattr(settings, section) == getattr(defaults, section), section
    assert settings.redis.shards == defaults.redis.shards
    assert [app.name for app in settings.apps] == ["demo", "demo-sandbox", "demo-voip"]
    assert settings.app(None).name == "demo"
    sandbox = settings.app("demo-sandbox")
    assert sandbox.endpoint is not None
    assert sandbox.endpoint.port == 2197


def test_live_activities_need_token_auth(tmp_path: Path) -> None:
    # Apple refuses Live Activity pushes on certificate connections.
    (tmp_path / "cert.pem").write_text("pem")
    entry = app_entry()
    entry["auth"] = {"certificate": {"cert_file": "cert.pem"}}
    entry["live_activity"] = {}
    assert problems_of(write_config(tmp_path, {"apps": [entry]}))[0].startswith(
        "apps[0]: live_activity: Apple accepts Live Activity pushes only with token auth"
    )
