"""A CometD (Bayeux 1.0) server over HTTP long-polling: GMS's chat channel `/_genesys`.

The seed: "GMS implements a Comet server that the mobile client connects to when a chat session is
opened ... The default channel used for chat is "/_genesys"". The protocol is Bayeux 1.0 as CometD
speaks it (the seed's iOS sample uses the DDCometClient library): `/meta/handshake` gives a
clientId, `/meta/subscribe` joins a channel, `/meta/connect` is held open until a message is due
or the long-poll timeout passes, `/meta/disconnect` ends the session. Only the long-polling
transport is offered. The endpoint answers at its own path and below it: the official CometD
JavaScript client appends the message type by default (`.../cometd/handshake`, `/connect`, ...),
and the Java CometD server GMS runs is mapped at `/cometd/*`, so it takes both.

Inferred (GMS's per-session routing is not public): a Comet session belongs to the `gms_user`
header its handshake carried (the seed's StartChat names that header, `_user_header`, for the chat's
requests), and a chat's events go to the subscribers of `/_genesys` whose session belongs to the
chat service's user; a session without the header gets the events of services without a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from relay_devkit.gms_sim.dialogs import JsonObject, JsonValue

BAYEUX_VERSION = "1.0"
LONG_POLLING = "long-polling"
DEFAULT_LONG_POLL_S = 10.0


GMS_USER_HEADER = "gms_user"


@dataclass
class CometClient:
    client_id: str
    gms_user: str = ""  # the gms_user header of its handshake: whose chats it receives
    subscriptions: set[str] = field(default_factory=set)
    pending: list[JsonObject] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    connected_once: bool = False
    held: bool = False  # a connect of its is held open now (tests wait on it, not on time)


def _reply(request: Mapping[str, JsonValue], **fields: JsonValue) -> JsonObject:
    reply: JsonObject = {"channel": request.get("channel")}
    if "id" in request:
        reply["id"] = request["id"]
    reply.update(fields)
    return reply


@dataclass
class CometServer:
    """Bayeux sessions in memory; `publish` queues a message for every subscriber."""

    long_poll_s: float = DEFAULT_LONG_POLL_S
    clients: dict[str, CometClient] = field(default_factory=dict)
    published: list[JsonObject] = field(default_factory=list)  # every message, for transcripts

    def _advice(self) -> JsonObject:
        return {"reconnect": "retry", "interval": 0, "timeout": int(self.long_poll_s * 1000)}

    def subscribers(self, channel: str, gms_user: str | None = None) -> list[CometClient]:
        """The channel's subscribers; with `gms_user`, only the sessions that user opened."""
        return [
            c
            for c in self.clients.values()
            if channel in c.subscriptions and (gms_user is None or c.gms_user == gms_user)
        ]

    def publish(self, message: JsonObject, gms_user: str | None = None) -> int:
        """Deliver `message` (a Bayeux message: channel + data) to its channel's subscribers (with
        `gms_user`: that user's sessions only); returns how many got it."""
        self.published.append(message)
        receivers = self.subscribers(str(message.get("channel")), gms_user)
        for client in receivers:
            client.pending.append(message)
            client.wake.set()
        return len(receivers)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            batch = await request.json()
        except ValueError:
            return web.json_response(
                {"error": "body: must be a JSON array of Bayeux messages"}, status=400
            )
        if isinstance(batch, dict):
            batch = [batch]
        if not isinstance(batch, list) or not all(isinstance(m, dict) for m in batch):
            return web.json_response(
                {"error": "body: must be a JSON array of Bayeux messages"}, status=400
            )
        gms_user = request.headers.get(GMS_USER_HEADER, "")
        replies: list[JsonObject] = []
        for message in batch:
            replies.extend(await self._answer(message, gms_user))
        return web.json_response(replies)

    async def _answer(self, message: JsonObject, gms_user: str) -> list[JsonObject]:
        channel = message.get("channel")
        if channel == "/meta/handshake":
            return [self._handshake(message, gms_user)]
        client = self.clients.get(str(message.get("clientId")))
        if client is None:
            return [
                _reply(
                    message,
                    successful=False,
                    error="402::Unknown client",
                    advice={"reconnect": "handshake", "interval": 0},
                )
            ]
        if channel == "/meta/connect":
            return await self._connect(client, message)
        if channel in ("/meta/subscribe", "/meta/unsubscribe"):
            subscription = message.get("subscription")
            if not isinstance(subscription, str) or not subscription.startswith("/"):
                return [_reply(message, successful=False, error="403::subscription: a channel")]
            if channel == "/meta/subscribe":
                client.subscriptions.add(subscription)
            else:
                client.subscriptions.discard(subscription)
            return [
                _reply(
                    message, successful=True, clientId=client.client_id, subscription=subscription
                )
            ]
        if channel == "/meta/disconnect":
            del self.clients[client.client_id]
            client.wake.set()  # a connect held open answers now
            return [_reply(message, successful=True, clientId=client.client_id)]
        # GMS chat clients send lines through ixn/chat/send, not by publishing (inferred).
        return [_reply(message, successful=False, error="403::publishing is not allowed")]

    def _handshake(self, message: JsonObject, gms_user: str) -> JsonObject:
        offered = message.get("supportedConnectionTypes")
        if not isinstance(offered, list) or LONG_POLLING not in offered:
            return _reply(
                message,
                successful=False,
                version=BAYEUX_VERSION,
                supportedConnectionTypes=[LONG_POLLING],
                error="406::only long-polling is supported",
                advice={"reconnect": "none"},
            )
        client = CometClient(secrets.token_hex(16), gms_user)
        self.clients[client.client_id] = client
        return _reply(
            message,
            successful=True,
            version=BAYEUX_VERSION,
            supportedConnectionTypes=[LONG_POLLING],
            clientId=client.client_id,
            advice=self._advice(),
        )

    async def _connect(self, client: CometClient, message: JsonObject) -> list[JsonObject]:
        # CometD answers a session's first connect at once, later ones when something is due.
        if client.connected_once and not client.pending:
            client.wake.clear()
            client.held = True
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wake.wait(), self.long_poll_s)
            finally:
                client.held = False
        client.connected_once = True
        if client.client_id not in self.clients:  # disconnected while held
            return [
                _reply(
                    message,
                    successful=False,
                    error="402::Unknown client",
                    advice={"reconnect": "none"},
                )
            ]
        delivered, client.pending = client.pending, []
        return [
            *delivered,
            _reply(message, successful=True, clientId=client.client_id, advice=self._advice()),
        ]

    def holds_a_connect(self) -> bool:
        """Whether any client's /meta/connect is held open, waiting for a message."""
        return any(client.held for client in self.clients.values())

    def close(self) -> None:
        """Release every held connect (the server is shutting down)."""
        for client in self.clients.values():
            client.wake.set()
        self.clients.clear()
