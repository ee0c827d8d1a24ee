"""The GMS simulator's HTTP face: creates callback services and answers the app's dialog POSTs."""

from __future__ import annotations

import secrets
import socket
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType

from aiohttp import web

from relay.gms_sim.dialogs import (
    CONNECT_MODES,
    SEED_DIALOGS,
    DialogContext,
    JsonObject,
    chat_start_answer,
    connect_dialog,
    seed_dialog,
    snooze_dialog,
)

DEFAULT_URL_PATH = "/genesys/1/service/"
# The seed's dialog URLs are "$(ExtURLBase)/1/service/...", so URLPath must end with this.
_SERVICE_API_SUFFIX = "/1/service/"
_SERVICE_ID_ALPHABET = string.ascii_uppercase + string.digits
SERVICE_ID_LENGTH = 32
# GMS's _user_confirm_timeout default: a confirmation menu is useless after it ($(Date)).
DEFAULT_CONFIRM_TIMEOUT = timedelta(seconds=30)
# GMS _call_direction: USERTERMINATED = GMS calls the customer, USERORIGINATED = the customer dials.
CALL_DIRECTIONS = {"USERTERMINATED": "outbound", "USERORIGINATED": "inbound"}
MENU_TARGETS = ("connect", "snooze", "ixn/chat", "get-dialog-user-confirmation")
REQUEST_LOG_LIMIT = 10_000


def new_service_id() -> str:
    """A GMS-style service id: 32 upper-case alphanumerics."""
    return "".join(secrets.choice(_SERVICE_ID_ALPHABET) for _ in range(SERVICE_ID_LENGTH))


@dataclass
class CallbackService:
    """One GMS callback service instance, as created by a scenario or a create request."""

    service_id: str
    name: str
    gms_user: str
    connect_mode: str  # "outbound" | "inbound": what the menu's `connect` answers
    chat_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request the simulator answered, for tests and transcripts."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    received_at: float


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


@dataclass
class GmsSimulator:
    """GMS's callback service API: state (services, request log) plus the aiohttp application."""

    url_path: str = DEFAULT_URL_PATH
    ext_url_base: str | None = None  # None: derived from each request's Host, so any port works
    confirm_timeout: timedelta = DEFAULT_CONFIRM_TIMEOUT
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    services: dict[str, CallbackService] = field(default_factory=dict)
    requests: deque[ReceivedRequest] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT)
    )

    def __post_init__(self) -> None:
        if not (self.url_path.startswith("/") and self.url_path.endswith(_SERVICE_API_SUFFIX)):
            raise ValueError(
                f"url_path: {self.url_path!r} must start with '/' and end with "
                f"{_SERVICE_API_SUFFIX!r} (the seed's dialog URLs are $(ExtURLBase)/1/service/...)"
            )

    def create_service(
        self, name: str = "callback", *, gms_user: str = "", connect_mode: str = "outbound"
    ) -> CallbackService:
        if connect_mode not in CONNECT_MODES:
            raise ValueError(f"connect_mode: {connect_mode!r} is not one of outbound, inbound")
        service = CallbackService(new_service_id(), name, gms_user, connect_mode)
        self.services[service.service_id] = service
        return service

    def requests_to(self, path_suffix: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._log_request])
        # The create route first: aiohttp resolves in registration order and "callback/<name>"
        # would otherwise read as service id "callback".
        app.router.add_post(self.url_path + "callback/{name}", self._create_callback)
        app.router.add_post(self.url_path + "{service_id}/{action:.+}", self._answer_action)
        return app

    @web.middleware
    async def _log_request(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        body = await request.read()
        status = 500  # what aiohttp answers when the handler raises anything else
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            self.requests.append(
                ReceivedRequest(
                    request.method, request.path, dict(request.headers), body, status, time.time()
                )
            )
        return response

    def _context(self, request: web.Request, service: CallbackService) -> DialogContext:
        ext_url_base = self.ext_url_base or (
            f"{request.scheme}://{request.host}{self.url_path.removesuffix(_SERVICE_API_SUFFIX)}"
        )
        return DialogContext(
            ext_url_base=ext_url_base,
            service_id=service.service_id,
            gms_user=service.gms_user or request.headers.get("gms_user", ""),
            expires_at=self.clock() + self.confirm_timeout,
        )

    async def _create_callback(self, request: web.Request) -> web.Response:
        fields: Mapping[str, object]
        if request.content_type == "application/json":
            parsed = await request.json()
            if not isinstance(parsed, dict):
                return _json_error(400, "body: must be a JSON object of callback options")
            fields = parsed
        else:
            fields = await request.post()
        direction = str(fields.get("_call_direction", "USERTERMINATED"))
        if direction not in CALL_DIRECTIONS:
            return _json_error(
                400, f"_call_direction: {direction!r} is not one of {sorted(CALL_DIRECTIONS)}"
            )
        service = self.create_service(
            request.match_info["name"],
            gms_user=request.headers.get("gms_user", ""),
            connect_mode=CALL_DIRECTIONS[direction],
        )
        return web.json_response({"_id": service.service_id})

    async def _answer_action(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]
        action = request.match_info["action"]
        service = self.services.get(service_id)
        if service is None:
            return _json_error(404, f"service id {service_id!r}: no such service")
        context = self._context(request, service)
        dialog = self._dialog(action, service, context)
        if dialog is None:
            known = sorted([*SEED_DIALOGS, *MENU_TARGETS])
            return _json_error(404, f"action {action!r}: not one of {known}")
        return web.json_response(dialog)

    def _dialog(
        self, action: str, service: CallbackService, context: DialogContext
    ) -> JsonObject | None:
        if action == "connect":
            return connect_dialog(service.connect_mode, context)
        if action == "snooze":
            return snooze_dialog(context)
        if action == "get-dialog-user-confirmation":
            # The menu's _resource_url: fetching it again shows the same menu.
            return seed_dialog("get-dialog-user-confirmation-provide_code-false", context)
        if action == "ixn/chat":
            service.chat_id = service.chat_id or secrets.token_hex(8).upper()
            return chat_start_answer(
                context,
                chat_id=service.chat_id,
                user_id=secrets.token_hex(8).upper(),
                secure_key=secrets.token_hex(8),
            )
        return seed_dialog(action, context)


class GmsSimServer:
    """A GmsSimulator listening on a loopback port (0 = a free one); an async context manager."""

    def __init__(self, simulator: GmsSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The seed's $(ServerURL): scheme, host and port, no path."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        # Bind the socket here so that port 0 yields a known port without aiohttp internals.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        self.port = listener.getsockname()[1]
        self._runner = web.AppRunner(self.simulator.application(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GmsSimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
