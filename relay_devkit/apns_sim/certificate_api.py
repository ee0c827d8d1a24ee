"""Push certificates over the control API, and `apns-relay apns-sim issue-cert` that asks for one.

POST /certificates {"topic", "voip"?, "environment"?, "expired"?, "password"?} issues a
certificate from the simulator's push CA and answers it as PEM (certificate and key) and, with a
password, as a base64 PKCS#12; POST /certificates/{serial}/revoke revokes one (BadCertificate on
every later request with it, on open connections too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from relay_devkit.apns_sim.apple import read_push_certificate
from relay_devkit.apns_sim.control import ControlPlane, _bad_request, _json, _json_body
from relay_devkit.apns_sim.info import SIM_JSON, SimInfo
from relay_devkit.apns_sim.push_certificates import ENVIRONMENTS, PushCertificateAuthority

_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*\Z")
PKCS12_SUFFIXES = (".p12", ".pfx")
REQUEST_TIMEOUT_S = 30.0


def add_certificate_routes(
    app: web.Application, authority: PushCertificateAuthority, plane: ControlPlane
) -> None:
    routes = web.RouteTableDef()

    @routes.post("/certificates")
    async def issue(request: web.Request) -> web.Response:
        document = await _json_body(request, default=None)
        topic = document.get("topic")
        if not isinstance(topic, str) or not _BUNDLE_ID.match(topic):
            raise _bad_request(
                f"topic: a bundle id (letters, digits, '.', '-') is required, got {topic!r}"
            )
        environment = document.get("environment", "sandbox")
        if environment not in ENVIRONMENTS:
            raise _bad_request(
                f"environment: one of {', '.join(ENVIRONMENTS)}, got {environment!r}"
            )
        flags = {name: document.get(name, False) for name in ("voip", "expired")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise _bad_request(f"{name}: must be true or false, got {value!r}")
        password = document.get("password")
        if password is not None and (not isinstance(password, str) or not password):
            raise _bad_request("password: a non-empty string (it protects the .p12)")
        # RSA key generation takes a noticeable moment: not on the loop that serves pushes.
        issued = await asyncio.to_thread(authority.issue, topic, environment=environment, **flags)
        info = read_push_certificate(issued.certificate)
        answer: dict[str, Any] = {
            "serial": str(info.serial),  # a 159-bit integer: a string survives any JSON reader
            "topics": list(info.topics),
            "environments": sorted(info.environments),
            "not_before": info.not_before.isoformat(),
            "not_after": info.not_after.isoformat(),
            "pem": issued.pem().decode(),
        }
        if password is not None:
            answer["p12"] = base64.b64encode(issued.pkcs12(password.encode())).decode()
        return _json(answer)

    @routes.post("/certificates/{serial}/revoke")
    async def revoke(request: web.Request) -> web.Response:
        text = request.match_info["serial"]
        if not text.isdigit():
            raise _bad_request(f"serial: a decimal serial number, got {text!r}")
        plane.state.revoked_certificates.add(int(text))
        await plane.publish()
        return _json({"serial": text, "revoked": True})

    app.add_routes(routes)


# --- apns-relay apns-sim issue-cert ---------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    issue = actions.add_parser(
        "issue-cert",
        help="issue a push client certificate from a running simulator's CA",
        description="Issue a push client certificate (Apple's format) from a running simulator.",
    )
    issue.add_argument(
        "--topic", required=True, dest="cert_topic", metavar="BUNDLE_ID", help="the app's bundle id"
    )
    issue.add_argument(
        "--voip",
        action="store_true",
        help="a universal certificate: topics <bundle id>, .voip and .complication",
    )
    issue.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        default="sandbox",
        dest="cert_environment",
        help="the APNs environment(s) it is valid for (default sandbox)",
    )
    issue.add_argument("--expired", action="store_true", help="one that expired yesterday")
    issue.add_argument(
        "--out",
        required=True,
        type=Path,
        help="file to write: .p12/.pfx for PKCS#12 (needs --password), else PEM cert + key",
    )
    issue.add_argument("--password", help="password of the .p12")
    # SUPPRESS: given before issue-cert, the simulator's own --state-dir is kept.
    issue.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the running simulator's state directory (its sim.json; default .apns-sim)",
    )


def issue_certificate(args: argparse.Namespace) -> int:
    """Ask the simulator of args.state_dir for a certificate and write it to args.out."""
    as_pkcs12 = args.out.suffix.lower() in PKCS12_SUFFIXES
    if as_pkcs12 and not args.password:
        print(
            "issue-cert: --password: required for a .p12 (Keychain exports need one)",
            file=sys.stderr,
        )
        return 2
    try:
        info = SimInfo.from_file(args.state_dir / SIM_JSON)
    except (OSError, ValueError, KeyError) as error:
        print(f"issue-cert: no running simulator in {args.state_dir}: {error}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {
        "topic": args.cert_topic,
        "voip": args.voip,
        "environment": args.cert_environment,
        "expired": args.expired,
    }
    if as_pkcs12:
        body["password"] = args.password
    request = urllib.request.Request(
        f"{info.control_url}/certificates",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            issued = orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        print(f"issue-cert: {error.read().decode(errors='replace')}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"issue-cert: the simulator at {info.control_url} did not answer: {error}",
            file=sys.stderr,
        )
        return 2
    content = base64.b64decode(issued["p12"]) if as_pkcs12 else issued["pem"].encode()
    args.out.touch(mode=0o600)
    args.out.write_bytes(content)
    print(
        f"{args.out}: serial {issued['serial']}, topics {', '.join(issued['topics'])}, "
        f"{' and '.join(issued['environments'])}, valid until {issued['not_after']}"
    )
    return 0
