"""Credentials rotated without a restart: on SIGHUP, or when the config file or a credential file
changes (a Kubernetes Secret swaps its files in place), a delivering process loads its settings as
at start-up and gives each running app's client the re-read key or certificate, if valid."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from relay.config.schema import AppAuth, ConfigError, Settings
from relay.config.secret_files import (
    CERTIFICATE_FILE_MAX_BYTES,
    CONFIG_FILE_MAX_BYTES,
    read_bounded,
)
from relay.core.model import Route
from relay.core.redaction import redact_text
from relay.credentials.check import AppUnderCheck, CredentialFacts
from relay.credentials.files import (
    credential_facts,
    load_credentials,
    load_settings,
    publish_certificate_expiry,
)
from relay.credentials.model import CertificateCredentials, Credentials
from relay.credentials.rotation import Judgement, describe, judge, restart_needed
from relay.telemetry import metrics

log = structlog.get_logger("relay.rotation")

SIGHUP_TRIGGER = "SIGHUP"
FILES_CHANGED = "files-changed"


def credential_paths(auth: AppAuth) -> list[Path]:
    if auth.token is not None:
        return [auth.token.key_file]
    assert auth.certificate is not None  # AppAuth allows exactly one
    certificate = auth.certificate
    return [p for p in (certificate.cert_file, certificate.key_file, certificate.p12_file) if p]


def file_digest(path: Path, limit: int = CERTIFICATE_FILE_MAX_BYTES) -> str:
    """What a file holds, as a digest (its content, not its timestamps: a Secret's swap keeps
    the path and may keep the time). A FIFO or an oversized file is refused before any read, so
    a poll never blocks on it nor hashes it again and again."""
    try:
        return hashlib.sha256(read_bounded(path, limit)).hexdigest()
    except OSError as error:
        return f"unreadable: {error.strerror or error}"


@dataclass(frozen=True, slots=True)
class Reread:
    """What a reload read from the files (off the event loop), before any client is touched:
    the settings or why they were rejected, each app's candidate credentials and facts, and the
    digests of the files to watch from now on."""

    trigger: str
    digests: dict[Path, str]
    settings: Settings | None = None
    rejected: ConfigError | None = None
    candidates: dict[str, tuple[Credentials | Exception, CredentialFacts]] = field(
        default_factory=dict
    )


class RotatingClient(Protocol):
    """What rotation needs of a running app's APNs client (relay.delivery.apns.RotatingClient): this
    layer sits below delivery, so it names the client's shape, not its class."""

    app: str
    route: Route
    credentials: Credentials

    def replace_credentials(self, credentials: Credentials) -> None: ...


class CredentialRotator:
    """Re-reads the settings from `config` and the environment, as start-up did, and swaps each
    running app's credentials (auth) in its client; everything else needs a restart."""

    def __init__(
        self,
        config: Path | None,
        running: Settings,
        clients: Mapping[str, RotatingClient],
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.config = config
        self.running = running
        self.clients = clients
        self.env = env
        # Each app's auth settings as last taken: the files its credentials in use came from.
        self.in_use = {app.name: app.auth for app in running.apps if app.name in clients}
        self.seen: dict[Path, str] = {}
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Future[dict[str, Judgement]]] = set()
        self._watch({}, ())

    def changed(self) -> bool:
        """Whether a watched file holds something else than when it was last read (blocking
        file reads: the event loop calls it through a thread)."""
        return any(self._digest(path) != digest for path, digest in self.seen.items())

    def reload(self, trigger: str) -> dict[str, Judgement]:
        """Each running app's outcome (logged and counted): its new credentials in use for new
        connections, the same ones, or the old ones kept because the new ones are invalid.
        Reads the files where it is called: in a process serving, reload_off_loop."""
        return self.apply(self.read(trigger))

    async def reload_off_loop(self, trigger: str) -> dict[str, Judgement]:
        """reload() with its file reads in a thread, so that a slow, huge or blocking file
        cannot stall health answers or delivery; one reload at a time."""
        async with self._reloading:
            return self.apply(await asyncio.to_thread(self.read, trigger))

    def reload_soon(self, trigger: str) -> None:
        """For a signal handler: start reload_off_loop, keeping the task until it ends."""
        task = asyncio.ensure_future(self.reload_off_loop(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Future[dict[str, Judgement]]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("credentials_watch_failed", error=type(task.exception()).__name__)

    def read(self, trigger: str) -> Reread:
        """Every file a reload needs, read now (blocking: call it through a thread)."""
        before = {path: self._digest(path) for path in self.seen}  # a change from now on counts
        try:
            reloaded = load_settings(self.config, self.env)
        except ConfigError as error:
            return Reread(trigger, before, rejected=error)
        candidates: dict[str, tuple[Credentials | Exception, CredentialFacts]] = {}
        for app in reloaded.apps:
            if app.name not in self.clients:
                continue  # added: restart_needed says so
            candidate: Credentials | Exception
            try:
                candidate = load_credentials(app)
            except (OSError, ValueError) as error:  # CertificateError, a .p8 that is not text
                candidate = error
            candidates[app.name] = (candidate, credential_facts(app))
        digests = dict(before)
        for auth in [*self.in_use.values(), *(app.auth for app in reloaded.apps)]:
            for path in credential_paths(auth):
                digests.setdefault(path, self._digest(path))
        return Reread(trigger, digests, reloaded, candidates=candidates)

    def apply(self, reread: Reread) -> dict[str, Judgement]:
        """The judgement of what read() found, and the swap of each client's credentials (on
        the event loop: no file is read here)."""
        trigger, reloaded = reread.trigger, reread.settings
        if reloaded is None:
            assert reread.rejected is not None
            problems = [redact_text(problem) for problem in reread.rejected.problems]
            log.error(
                "credentials_reload_failed",
                trigger=trigger,
                problems=problems,
                kept="the credentials in use, for every app",
            )
            self._watch(reread.digests, ())
            for name in self.clients:
                metrics.CREDENTIAL_RELOADS.labels(app=name, outcome="rejected").inc()
            return dict.fromkeys(self.clients, Judgement("rejected", "; ".join(problems)))
        if changes := restart_needed(self.running, reloaded):
            log.warning("settings_changed_restart_needed", trigger=trigger, changes=changes)
        now = datetime.datetime.now(datetime.UTC)
        judgements = {}
        for app in reloaded.apps:
            client = self.clients.get(app.name)
            if client is None or app.name not in reread.candidates:
                continue  # added: restart_needed said so
            candidate, facts = reread.candidates[app.name]
            under_check = AppUnderCheck(
                app.name, app.topic, app.environment, client.route.endpoint, facts
            )
            in_use = client.credentials
            judgement = judge(under_check, now, in_use, candidate)
            if judgement.outcome == "rotated":
                assert not isinstance(candidate, Exception)
                judgement = self._swap(client, candidate, judgement)
            if judgement.outcome != "rejected":
                self.in_use[app.name] = app.auth
            self._report(app.name, trigger, judgement, in_use)
            judgements[app.name] = judgement
        self._watch(reread.digests, [app.auth for app in reloaded.apps])
        return judgements

    def _swap(
        self, client: RotatingClient, credentials: Credentials, rotated: Judgement
    ) -> Judgement:
        try:
            client.replace_credentials(credentials)
        except ssl.SSLError as error:  # a certificate OpenSSL refuses to load
            return Judgement(
                "rejected",
                f"the TLS library refuses the certificate: {error}",
                "export the push certificate and its key again",
            )
        if isinstance(credentials, CertificateCredentials):
            publish_certificate_expiry(client.app, credentials.certificate)
        else:  # a token key does not expire
            metrics.CREDENTIAL_EXPIRY.remove(client.app)
        return rotated

    def _report(self, app: str, trigger: str, judgement: Judgement, in_use: Credentials) -> None:
        metrics.CREDENTIAL_RELOADS.labels(app=app, outcome=judgement.outcome).inc()
        if judgement.outcome == "rejected":
            log.error(
                "credentials_rejected",
                app=app,
                trigger=trigger,
                problem=judgement.detail,
                fix=judgement.fix,
                kept=describe(in_use),
            )
        else:
            event = f"credentials_{judgement.outcome}"
            log.info(event, app=app, trigger=trigger, detail=judgement.detail)

    def _watch(self, before: Mapping[Path, str], reloaded: Iterable[AppAuth]) -> None:
        """Watch, from now on, the config file, the files of the credentials in use and those of
        the ones just read (a rejected file is watched until it is mended); a file as it was
        before this reload read it, so that a change meanwhile is not missed."""
        auths = [*self.in_use.values(), *reloaded]
        paths = {path for auth in auths for path in credential_paths(auth)}
        if self.config is not None:
            paths.add(self.config)
        self.seen = {path: before.get(path) or self._digest(path) for path in paths}

    def _digest(self, path: Path) -> str:
        limit = CONFIG_FILE_MAX_BYTES if path == self.config else CERTIFICATE_FILE_MAX_BYTES
        return file_digest(path, limit)

    async def watch(self, interval_s: float) -> None:
        """Reload whenever a watched file's content changes, compared every `interval_s` (the
        comparison and the reload read the files in a thread)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self.changed):
                    await self.reload_off_loop(FILES_CHANGED)
            except Exception:  # a fault here must not end the watching (nor the process)
                log.exception("credentials_watch_failed")
