"""The "Connect your GMS" example (docs/gms.md), as an operator would paste it: the relay.yaml
validates against the relay's schema, and the GMS side names only documented options and
agrees with the relay (credential, app prefix)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config.schema import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "gms.md"

# The options Genesys documents (GMS [push] and [gms] sections, Chat Server [chat] section) in its
# GMS and Chat Server option references (docs.genesys.com). A name outside this set on the page
# is a typo an operator would paste into GMS, where an unknown option is silently ignored.
DOCUMENTED_GMS_OPTIONS = {
    "push": {"pushEnabled", "customhttp.url", "debug.customhttp.url", "customhttp.message"},
    "gms": {
        "http.ssl_trust_all",
        "http.connection_timeout",
        "http.socket_timeout",
        "http.max_connections_per_route",
        "http.max_connections_total",
    },
    "chat": {"enable_notification_mode", "push_notification_include_payload"},
}
PUSH_TYPES = {"android", "gcm", "ios", "httpcb", "orscb", "customhttp", "fcm", "comet"}


def connect_section() -> str:
    text = PAGE.read_text()
    start = text.index("\n## Connect your GMS\n")
    return text[start : text.index("\n## ", start + 1)]


def fenced(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", connect_section(), re.DOTALL)
    assert len(blocks) == 1, f"expected one {language} block in Connect your GMS"
    return str(blocks[0])


def gms_options() -> dict[str, dict[str, str]]:
    """The ini block as {section: {option: value}}, commented-out options included (an operator
    uncomments them as they are)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in fenced("ini").splitlines():
        line = line.strip()
        if match := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(match[1], {})
        elif option := re.fullmatch(r"#?\s*([\w.]+)=(\S+).*", line):
            assert current is not None, f"{line!r} outside a section"
            current[option[1]] = option[2]
    return sections


def example_settings(tmp_path: Path) -> Settings:
    """The page's relay.yaml validated as `apns-relay` would, its key files made real here."""
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    document = fenced("yaml")
    for path in set(re.findall(r"/etc/apns-relay/\S+", document)):
        local = tmp_path / Path(path).name
        local.write_bytes(key)
        document = document.replace(path, str(local))
    return Settings.model_validate(yaml.safe_load(document))


def test_the_example_relay_yaml_validates_against_the_schema(tmp_path: Path) -> None:
    settings = example_settings(tmp_path)
    assert settings.redis.url, "GMS needs Redis"
    assert settings.ingest.spool_dir, "GMS needs a spool: it never resends"
    assert settings.auth.basic, "GMS authenticates with Basic"
    assert {app.environment for app in settings.apps} == {"production", "sandbox"}


def test_the_example_gms_options_are_documented_ones() -> None:
    options = gms_options()
    assert set(options) <= set(DOCUMENTED_GMS_OPTIONS)
    for section, names in options.items():
        unknown = set(names) - DOCUMENTED_GMS_OPTIONS[section]
        assert not unknown, f"[{section}] names undocumented options {unknown}"
    assert set(options["push"]["pushEnabled"].split(",")) <= PUSH_TYPES
    assert "customhttp" in options["push"]["pushEnabled"].split(",")
    for url in ("customhttp.url", "debug.customhttp.url"):
        assert options["push"][url].endswith("/gms/push"), url
    assert options["chat"] == {
        "enable_notification_mode": "true",
        "push_notification_include_payload": "true",
    }


def test_the_example_subscription_matches_the_relay(tmp_path: Path) -> None:
    settings = example_settings(tmp_path)
    subscription = json.loads(fenced("json"))
    user_password = base64.b64decode(subscription["authorization"], validate=True).decode()
    assert user_password in [pair.get_secret_value() for pair in settings.auth.basic]
    app, _, _ = subscription["deviceId"].partition(":")
    assert app in [configured.name for configured in settings.apps]
    assert subscription["providerName"] == "customhttp"
