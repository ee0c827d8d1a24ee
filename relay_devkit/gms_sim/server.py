"""The GMS simulator's HTTP face: callback services driven by callback.py's state machine, chat
sessions (chat.py) with their Comet server (comet.py), and the pushes GMS sends to the relay."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

from aiohttp import web

from relay_devkit.gms_sim import callback as machine
from relay_devkit.gms_sim.callback import Callback, CallbackOptions, Step
from relay_devkit.gms_sim.chat import CLIENT_NICK, ChatSession, TranscriptLine
from relay_devkit.gms_sim.comet import CometServer
from relay_devkit.gms_sim.dialogs import (
    CANCELLED_TEXT,
    CONNECT_MODES,
    GAVE_UP_TEXT,
    SEED_DIALOGS,
    DialogContext,
    JsonObject,
    JsonValue,
    notice_dialog,
    seed_dialog,
    snooze_text,
)
from relay_devkit.gms_sim.push import CustomHttpPusher, callback_message

DEFAULT_URL_PATH = "/genesys/1/service/"
# The seed's dialog URLs are "$(ExtURLBase)/1/service/...", so URLPath must end with this.
_SERVICE_API_SUFFIX = "/1/service/"
_SERVICE_ID_ALPHABET = string.ascii_uppercase + string.digits
SERVICE_ID_LENGTH = 32
# GMS _call_direction: USERTERMINATED = GMS calls the customer, USERORIGINATED = the customer dials.
CALL_DIRECTIONS = {"USERTERMINATED": "outbound", "USERORIGINATED": "inbound"}
CHAT_ACTIONS = ("ixn/chat", "ixn/chat/refresh", "ixn/chat/send", "ixn/chat/disconnect")
MENU_TARGETS = ("connect", "snooze", "get-dialog-user-confirmation")
REQUEST_LOG_LIMIT = 10_000
_TRUE = ("true", "1", "yes")


def new_service_id() -> str:
    """A GMS-style service id: 32 upper-case alphanumerics."""
    return "".join(secrets.choice(_SERVICE_ID_ALPHABET) for _ in range(SERVICE_ID_LENGTH))


@dataclass
class Service:
    """One GMS service instance: a callback (with its state machine) or a chat."""

    service_id: str
    name: str
    gms_user: str
    device_id: str | None  # where GMS pushes for this service (customhttp deviceId)
    callback: Callback | None = None
    chat: ChatSession | None = None
    timer: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request the simulator answered, for tests and transcripts."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    received_at: float


@dataclass(frozen=True, slots=True)
class PushRecord:
    """A push GMS sent (or could not send) for a service."""

    at: float
    service_id: str
    message: JsonObject
    error: str | None = None  # None: the relay answered 200
    answer: JsonValue = None  # the relay's 200 answer (its notification id)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


async def _fields(request: web.Request) -> Mapping[str, str]:
    """A POST's parameters: GMS's APIs take form fields; JSON objects are accepted too."""
    if request.content_type == "application/json":
        parsed = await request.json()
        if not isinstance(parsed, dict):
            raise web.HTTPBadRequest(text="body: must be a JSON object")
        return {key: str(value) for key, value in parsed.items()}
    form = await request.post()
    return {key: str(value) for key, value in form.items()}


def callback_options(fields: Mapping[str, str]) -> CallbackOptions:
    """GMS's callback options from a create request's fields (ValueError names the bad one)."""
    defaults = CallbackOptions()

    def flag(name: str, default: bool) -> bool:
        return fields[name].lower() in _TRUE if name in fields else default

    def number(name: str, default: float) -> float:
        try:
            return float(fields[name]) if name in fields else default
        except ValueError:
            raise ValueError(f"{name}: {fields[name]!r} is not a number") from None

    direction = fields.get("_call_direction", "USERTERMINATED")
    if direction not in CALL_DIRECTIONS:
        raise ValueError(f"_call_direction: {direction!r} is not one of {sorted(CALL_DIRECTIONS)}")
    return CallbackOptions(
        wait_for_agent=flag("_wait_for_agent", defaults.wait_for_agent),
        wait_for_user_confirm=flag("_wait_for_user_confirm", defaults.wait_for_user_confirm),
        user_confirm_timeout_s=number("_user_confirm_timeout", defaults.user_confirm_timeout_s),
        max_confirmation_attempts=int(
            number(
                "_max_number_of_user_availability_confirmation_attempts",
                defaults.max_confirmation_attempts,
            )
        ),
        # These two are the simulator's own (GMS's names for them are not public): how long
        # "try again in 5 minutes" waits, and which of the seed's two menus is pushed.
        snooze_delay_s=number("_snooze_delay", defaults.snooze_delay_s),
        provide_code=flag("_provide_code", defaults.provide_code),
        connect_mode=CALL_DIRECTIONS[direction],
    )


@dataclass
class GmsSimulator:
    """GMS's service API: services, their timers, the Comet server, pushes and a request log."""

    url_path: str = DEFAULT_URL_PATH
    ext_url_base: str | None = None  # None: derived from each request's Host, so any port works
    pusher: CustomHttpPusher | None = None  # None: pushes are recorded, not sent
    message_as_string: bool = False  # send `message` JSON-encoded inside a string
    clock: Callable[[], float] = time.time
    comet: CometServer = field(default_factory=CometServer)
    services: dict[str, Service] = field(default_factory=dict)
    pushes: list[PushRecord] = field(default_factory=list)
    requests: deque[ReceivedRequest] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT)
    )

    def __post_init__(self) -> None:
        if not (self.url_path.startswith("/") and self.url_path.endswith(_SERVICE_API_SUFFIX)):
            raise ValueError(
                f"url_path: {self.url_path!r} must start with '/' and end with "
                f"{_SERVICE_API_SUFFIX!r} (the seed's dialog URLs are $(ExtURLBase)/1/service/...)"
            )

    @property
    def comet_path(self) -> str:
        """Where CometD is served: $(CometURL) = $(ExtURLBase)/cometd (inferred)."""
        return self.url_path.removesuffix(_SERVICE_API_SUFFIX) + "/cometd"

    # ---- services ----

    def create_chat_service(self, *, gms_user: str = "", device_id: str | None = None) -> Service:
        service = Service(new_service_id(), "chat", gms_user, device_id)
        self.services[service.service_id] = service
        return service

    async def create_callback(
        self,
        options: CallbackOptions | None = None,
        *,
        name: str = "callback",
        gms_user: str = "",
        device_id: str | None = None,
    ) -> Service:
        """A callback service; its first pushes (wait-for-agent, or more) are sent before this
        returns."""
        options = options or CallbackOptions()
        if options.connect_mode not in CONNECT_MODES:
            raise ValueError(f"connect_mode: {options.connect_mode!r} is not outbound or inbound")
        service = Service(new_service_id(), name, gms_user, device_id)
        self.services[service.service_id] = service
        await self._apply(service, machine.start(options, self.clock()))
        return service

    async def agent_available(self, service_id: str) -> None:
        """An agent is free for this callback (what the scenario's contact centre says)."""
        service = self.services[service_id]
        if service.callback is None:
            raise ValueError(f"service {service_id}: not a callback")
        await self._apply(service, machine.agent_available(service.callback, self.clock()))

    async def _apply(self, service: Service, step: Step) -> None:
        service.callback = step.callback
        self._arm(service)
        for action in step.pushes:
            await self.push(service, callback_message(service.service_id, action))

    def _arm(self, service: Service) -> None:
        """One timer per callback, set for its deadline (a confirmation's or a snooze's)."""
        if service.timer is not None and service.timer is not asyncio.current_task():
            service.timer.cancel()
        service.timer = None
        callback = service.callback
        if callback is not None and callback.deadline is not None and not callback.state.ended:
            service.timer = asyncio.create_task(self._on_deadline(service, callback.deadline))

    async def _on_deadline(self, service: Service, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.clock()))
        assert service.callback is not None  # armed only for callbacks
        await self._apply(service, machine.timer(service.callback, self.clock()))

    async def push(self, service: Service, message: JsonObject) -> None:
        """GMS's customhttp push of `message` for `service`; a failure is recorded, not raised
        (GMS only logs a failed push: it never resends)."""
        at = self.clock()
        if self.pusher is None or service.device_id is None:
            self.pushes.append(PushRecord(at, service.service_id, message, "no pusher or device"))
            return
        try:
            sent = await self.pusher.push(
                service.device_id, message, message_as_string=self.message_as_string
            )
        except Exception as error:  # the simulator must keep serving whatever the relay did
            self.pushes.append(PushRecord(at, service.service_id, message, repr(error)))
            return
        self.pushes.append(PushRecord(at, service.service_id, message, answer=sent.answer))

    def pushes_for(self, service_id: str) -> list[PushRecord]:
        return [push for push in self.pushes if push.service_id == service_id]

    async def close(self) -> None:
        timers = [s.timer for s in self.services.values() if s.timer is not None]
        for task in timers:
            task.cancel()
        for task in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.comet.close()

    # ---- chat ----

    async def start_chat(self, service_id: str, nick: str = CLIENT_NICK, subject: str = "") -> None:
        """Open the service's chat; the customer's joining is its first line (inferred)."""
        service = self.services[service_id]
        service.chat = ChatSession(service_id, self._now(), subject=subject)
        joined = TranscriptLine("Notice.Joined", nick, "has joined the session", "CLIENT")
        await self._publish(service, service.chat.add(joined, self._now()))

    async def chat_line(self, service_id: str, line: TranscriptLine) -> JsonObject:
        """A line from the contact centre's side (the agent): published on Comet; pushed through
        customhttp when no Comet session of this chat's user listens (inferred: Chat Server's
        notification mode)."""
        chat = self._chat(service_id)
        return await self._publish(self.services[service_id], chat.add(line, self._now()))

    async def end_chat(self, service_id: str) -> JsonObject:
        return await self._publish(self.services[service_id], self._chat(service_id).disconnect())

    def _chat(self, service_id: str) -> ChatSession:
        chat = self.services[service_id].chat
        if chat is None:
            raise ValueError(f"service {service_id}: no chat started (POST ixn/chat first)")
        return chat

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def _publish(self, service: Service, event: JsonObject) -> JsonObject:
        # Pushed only when no Comet session of this chat's user got it (inferred notification
        # mode): another customer's open chat does not silence this one's pushes.
        if self.comet.publish(event, gms_user=service.gms_user) == 0:
            await self.push(service, event)
        return event

    # ---- HTTP ----

    def requests_to(self, path_suffix: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._log_request])
        # CometD clients may append the message type (.../cometd/handshake): GMS's /cometd/*.
        app.router.add_post(self.comet_path, self.comet.handle)
        app.router.add_post(self.comet_path + "/{message_type:.*}", self.comet.handle)
        # The create route first: aiohttp resolves in registration order and "callback/<name>"
        # would otherwise read as service id "callback".
        app.router.add_post(self.url_path + "callback/{name}", self._create_callback)
        app.router.add_post(self.url_path + "{service_id}/{action:.+}", self._answer_action)
        app.on_shutdown.append(lambda _: self.close())
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

    def _context(
        self, request: web.Request, service: Service, expires_at: float | None = None
    ) -> DialogContext:
        ext_url_base = self.ext_url_base or (
            f"{request.scheme}://{request.host}{self.url_path.removesuffix(_SERVICE_API_SUFFIX)}"
        )
        return DialogContext(
            ext_url_base=ext_url_base,
            service_id=service.service_id,
            gms_user=service.gms_user or request.headers.get("gms_user", ""),
            expires_at=datetime.fromtimestamp(
                self.clock() if expires_at is None else expires_at, UTC
            ),
        )

    async def _create_callback(self, request: web.Request) -> web.Response:
        fields = await _fields(request)
        try:
            options = callback_options(fields)
        except ValueError as error:
            return _json_error(400, str(error))
        service = await self.create_callback(
            options,
            name=request.match_info["name"],
            gms_user=request.headers.get("gms_user", ""),
            device_id=fields.get("_device_id"),  # inferred: the customhttp deviceId to push to
        )
        return web.json_response({"_id": service.service_id})

    async def _answer_action(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]
        action = request.match_info["action"]
        service = self.services.get(service_id)
        if service is None:
            return _json_error(404, f"service id {service_id!r}: no such service")
        fields = await _fields(request)
        if action in CHAT_ACTIONS:
            return await self._answer_chat(request, service, action, fields)
        if service.callback is not None and (
            action in MENU_TARGETS or action.startswith(machine.CONFIRMATION_ACTION_PREFIX)
        ):
            step = machine.request(service.callback, action, fields.get("_dialog_id"), self.clock())
            await self._apply(service, step)
            assert step.answer is not None  # a request always has an answer
            return self._dialog_response(request, service, step.answer)
        dialog = seed_dialog(action, self._context(request, service))
        if dialog is None:
            known = sorted([*SEED_DIALOGS, *MENU_TARGETS, *CHAT_ACTIONS])
            return _json_error(404, f"action {action!r}: not one of {known}")
        return web.json_response(dialog)

    def _dialog_response(
        self, request: web.Request, service: Service, answer: machine.Answer
    ) -> web.Response:
        if answer.status != 200 or answer.dialog is None:
            return _json_error(answer.status, answer.detail)
        assert service.callback is not None  # only callbacks answer through the machine
        context = self._context(request, service, answer.expires_at)
        texts = {
            "snooze": snooze_text(service.callback.options.snooze_delay_s),
            "cancel": CANCELLED_TEXT,
            "gave-up": GAVE_UP_TEXT,
        }
        if answer.dialog in texts:
            return web.json_response(notice_dialog(texts[answer.dialog], context))
        dialog = seed_dialog(answer.dialog, context)
        assert dialog is not None  # the machine names only seed dialogs besides the texts
        return web.json_response(dialog)

    async def _answer_chat(
        self, request: web.Request, service: Service, action: str, fields: Mapping[str, str]
    ) -> web.Response:
        if action == "ixn/chat":
            # Inferred: the header StartChat's _user_header names must match the service's user.
            header = request.headers.get("gms_user", "")
            if service.gms_user and header != service.gms_user:
                return _json_error(403, f"gms_user header: {header!r} is not this service's user")
            if service.chat is None:
                await self.start_chat(
                    service.service_id,
                    fields.get("nickname") or CLIENT_NICK,
                    fields.get("subject", ""),
                )
            assert service.chat is not None  # started just above
            context = self._context(request, service)
            answer: JsonObject = {
                **service.chat.refresh(1),
                "_id": service.service_id,
                "_comet_url": context.comet_url,
                "tag": service.chat.tag,
            }
            return web.json_response(answer)
        chat = service.chat
        if chat is None:
            return _json_error(409, f"{action}: no chat started for this service (ixn/chat)")
        if action == "ixn/chat/refresh":
            raw = fields.get("transcriptPosition", "1")
            if not raw.isdigit():
                return _json_error(400, f"transcriptPosition: {raw!r} is not a position")
            return web.json_response(chat.refresh(int(raw)))
        if action == "ixn/chat/send":
            text = fields.get("message", "")
            if not text:
                return _json_error(400, "message: the chat line to send is required")
            nick = fields.get("nickname") or CLIENT_NICK
            event = await self._publish(
                service, chat.add(TranscriptLine("Message.Text", nick, text, "CLIENT"), self._now())
            )
            return web.json_response(_event_message(event))
        event = await self._publish(service, chat.disconnect())
        return web.json_response(_event_message(event))


def _event_message(event: JsonObject) -> JsonValue:
    data = event.get("data")
    return data.get("message") if isinstance(data, dict) else None


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
