"""The GMS simulator's CometD server: a real CometD client (aiocometd-ng) and raw Bayeux."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiocometd_ng.client import Client
from aiocometd_ng.constants import ConnectionType
from eventually import eventually

from relay_devkit.device_sim.app import AppSettings, CloseComet, DeviceApp, OpenComet
from relay_devkit.device_sim.phone import Phone
from relay_devkit.gms_sim.chat import AGENT_NICK, TranscriptLine
from relay_devkit.gms_sim.comet import CometServer
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator

JOINED = TranscriptLine("Notice.Joined", AGENT_NICK, "has joined the session", "AGENT")


@pytest.fixture
async def gms() -> AsyncIterator[GmsSimServer]:
    async with GmsSimServer(GmsSimulator(comet=CometServer(long_poll_s=5.0))) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def _bayeux(
    http: aiohttp.ClientSession, url: str, *messages: dict[str, object]
) -> list[dict[str, object]]:
    async with http.post(url, json=list(messages)) as response:
        assert response.status == 200
        answer: list[dict[str, object]] = await response.json()
        return answer


async def test_a_cometd_client_receives_the_chat_events_on_genesys(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    simulator = gms.simulator
    service = simulator.create_chat_service()
    await simulator.start_chat(service.service_id)
    comet_url = f"{gms.base_url}/genesys/cometd"
    async with Client(comet_url, ConnectionType.LONG_POLLING) as client:
        await client.subscribe("/_genesys")
        published = await simulator.chat_line(service.service_id, JOINED)
        received = await asyncio.wait_for(client.receive(), 10)
        ended = await simulator.end_chat(service.service_id)
        assert await asyncio.wait_for(client.receive(), 10) == ended
    assert received == published  # the seed's event, as the Bayeux message itself
    assert received["channel"] == "/_genesys"
    data = received["data"]
    assert data["tag"] == f"service.chat.refresh.{service.service_id}"
    assert data["message"]["transcriptToShow"][0][:3] == [JOINED.kind, JOINED.nick, JOINED.text]
    # While a client listened nothing was pushed; the closed session is gone.
    # Each push is the seed's Bayeux event: its data.message is the chat refresh object.
    assert [
        cast(dict[str, Any], p.message["data"])["message"]["transcriptPosition"]
        for p in simulator.pushes
    ] == ["1"]
    assert simulator.comet.clients == {}


async def test_bayeux_handshake_subscribe_connect_and_disconnect(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    url = f"{gms.base_url}/genesys/cometd"
    [shake] = await _bayeux(
        http,
        url,
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": "1",
        },
    )
    assert shake["successful"] is True
    assert shake["supportedConnectionTypes"] == ["long-polling"]
    client_id = shake["clientId"]
    [subscribed] = await _bayeux(
        http,
        url,
        {
            "channel": "/meta/subscribe",
            "clientId": client_id,
            "subscription": "/_genesys",
            "id": "2",
        },
    )
    assert (subscribed["successful"], subscribed["subscription"], subscribed["id"]) == (
        True,
        "/_genesys",
        "2",
    )
    connect = {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}
    [first] = await _bayeux(http, url, connect)  # the first connect is answered at once
    assert first["successful"] is True
    # A later connect is held until something is published (or the long-poll timeout).
    held = await _held(gms.simulator, _bayeux(http, url, connect))
    assert not held.done()
    assert gms.simulator.comet.publish({"channel": "/_genesys", "data": {"n": 1}}) == 1
    event, reply = await asyncio.wait_for(held, 5)
    assert event == {"channel": "/_genesys", "data": {"n": 1}}
    assert reply["channel"] == "/meta/connect"
    # Disconnecting answers a held connect at once, and forgets the client.
    held = await _held(gms.simulator, _bayeux(http, url, connect))
    [gone] = await _bayeux(http, url, {"channel": "/meta/disconnect", "clientId": client_id})
    assert gone["successful"] is True
    [late] = await asyncio.wait_for(held, 5)
    assert late["successful"] is False
    [unknown] = await _bayeux(http, url, connect)
    assert (unknown["error"], unknown["advice"]) == (
        "402::Unknown client",
        {"reconnect": "handshake", "interval": 0},
    )


async def test_bayeux_refusals(gms: GmsSimServer, http: aiohttp.ClientSession) -> None:
    url = f"{gms.base_url}/genesys/cometd"
    [refused] = await _bayeux(
        http,
        url,
        {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]},
    )
    assert (refused["successful"], refused["error"]) == (
        False,
        "406::only long-polling is supported",
    )
    [shake] = await _bayeux(
        http,
        url,
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        },
    )
    [publish] = await _bayeux(
        http, url, {"channel": "/_genesys", "clientId": shake["clientId"], "data": {"x": 1}}
    )
    assert publish["successful"] is False  # GMS chat lines go through ixn/chat/send
    async with http.post(url, data=b"not json") as response:
        assert response.status == 400


async def _held(
    simulator: GmsSimulator, connect: Awaitable[list[dict[str, Any]]]
) -> asyncio.Future[list[dict[str, Any]]]:
    """`connect` running, once the simulator holds it open."""
    held = asyncio.ensure_future(connect)
    await eventually(simulator.comet.holds_a_connect, timeout_s=10, what="the connect held")
    return held


async def _wait_for_held_connect(simulator: GmsSimulator) -> None:
    """Until the client's second /meta/connect is held open at the server."""
    await eventually(simulator.comet.holds_a_connect, timeout_s=10, what="a held connect")


async def test_aiocometd_ng_close_leaks_a_cancelled_connect_which_the_phone_silences(
    gms: GmsSimServer,
) -> None:
    """Contract for relay_devkit.device_sim.phone._quiet_comet_close: aiocometd-ng 0.5.6 closes by
    cancelling its held /meta/connect, and TransportBase._connect_done lets the CancelledError
    reach the loop's error report. If this stops failing upstream, drop the workaround."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    url = f"{gms.base_url}/genesys/cometd"
    try:
        client = Client(url, ConnectionType.LONG_POLLING)
        await client.open()
        await client.subscribe("/_genesys")
        await _wait_for_held_connect(gms.simulator)
        await client.close()
        assert any("_connect_done" in repr(context.get("handle")) for context in reported)

        reported.clear()
        gms.simulator.requests.clear()
        phone = Phone(
            aiohttp.ClientSession(),
            "http://127.0.0.1:9",
            "ab" * 32,
            DeviceApp(AppSettings(gms.base_url)),
        )
        try:
            await phone.perform([OpenComet(url)])
            assert phone.comet_connected
            await _wait_for_held_connect(gms.simulator)
            await phone.perform([CloseComet()])
        finally:
            await phone.session.close()
        assert reported == []
        assert loop.get_exception_handler() is not None  # ours, restored after the close
    finally:
        loop.set_exception_handler(None)


async def test_pushes_are_held_back_only_for_the_chat_whose_user_listens(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    """One customer's open Comet session must not silence another customer's chat pushes: a
    session belongs to the gms_user header of its handshake (inferred), as a chat to its user."""
    simulator = gms.simulator
    alice = simulator.create_chat_service(gms_user="alice")
    bob = simulator.create_chat_service(gms_user="bob")
    for service in (alice, bob):
        await simulator.start_chat(service.service_id)
    pushed_at_start = len(simulator.pushes)
    async with http.post(
        f"{gms.base_url}/genesys/cometd/handshake",
        json=[
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        ],
        headers={"gms_user": "alice"},
    ) as response:
        [shake] = await response.json()
    subscribe = {
        "channel": "/meta/subscribe",
        "clientId": shake["clientId"],
        "subscription": "/_genesys",
    }
    await _bayeux(http, f"{gms.base_url}/genesys/cometd", subscribe)
    await simulator.chat_line(alice.service_id, JOINED)
    await simulator.chat_line(bob.service_id, JOINED)
    pushed = [p.service_id for p in simulator.pushes[pushed_at_start:]]
    assert pushed == [bob.service_id]  # alice's line went over her Comet session instead
    [client] = simulator.comet.clients.values()
    assert [cast(dict[str, Any], m["data"])["tag"] for m in client.pending] == [
        f"service.chat.refresh.{alice.service_id}"
    ]


# The official CometD JavaScript client (npm cometd + cometd-nodejs-client), installed by this test
# from tests/node/cometd's lock file, as bench/node's peer is installed from its own.
NODE_CLIENT = Path(__file__).resolve().parents[1] / "node" / "cometd"
NODE_WORK = Path(__file__).resolve().parents[1] / ".work" / "cometd-node"
NPM_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cometd_js() -> Path:
    """A directory holding client.mjs and its node_modules, installed by `npm ci` from the lock
    file (again whenever the lock file changes)."""
    lock = (NODE_CLIENT / "package-lock.json").read_bytes()
    stamp = NODE_WORK / "installed.lock"
    if not (stamp.is_file() and stamp.read_bytes() == lock):
        NODE_WORK.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NODE_CLIENT / name, NODE_WORK / name)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_WORK,
            check=True,
            timeout=NPM_TIMEOUT_S,
            capture_output=True,
        )
        stamp.write_bytes(lock)
    shutil.copyfile(NODE_CLIENT / "client.mjs", NODE_WORK / "client.mjs")
    return NODE_WORK


async def test_the_official_cometd_client_at_its_defaults_chats(
    gms: GmsSimServer, cometd_js: Path
) -> None:
    """Its defaults append the message type to the URL (.../cometd/handshake, /connect): the Java
    CometD server GMS runs at /cometd/* takes that, and so must the simulator."""
    simulator = gms.simulator
    service = simulator.create_chat_service()
    await simulator.start_chat(service.service_id)
    pushed_at_start = len(simulator.pushes)
    node = await asyncio.create_subprocess_exec(
        "node",
        str(cometd_js / "client.mjs"),
        f"{gms.base_url}/genesys/cometd",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert node.stdout is not None
    said: list[dict[str, Any]] = []
    try:

        async def next_line() -> dict[str, Any]:
            assert node.stdout is not None
            while True:
                line = await asyncio.wait_for(node.stdout.readline(), 20)
                assert line, "the CometD client ended early"
                if line.startswith(b"event: "):  # not the library's own console output
                    said.append(json.loads(line.removeprefix(b"event: ")))
                    return said[-1]

        while (await next_line())["event"] != "subscribe":
            pass
        published = [
            await simulator.chat_line(service.service_id, JOINED),
            await simulator.end_chat(service.service_id),
        ]
        while (await next_line())["event"] != "disconnect":
            pass
        assert await asyncio.wait_for(node.wait(), 20) == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    # Its first transport, WebSocket, is not offered (only long-polling is): it falls back.
    handshakes = [s for s in said if s["event"] == "handshake"]
    assert handshakes[-1] == {"event": "handshake", "successful": True, "transport": "long-polling"}
    assert {"event": "subscribe", "successful": True} in said
    messages = [s for s in said if s["event"] == "message"]
    assert messages == [
        {"event": "message", "channel": "/_genesys", "data": event["data"]} for event in published
    ]
    assert said[-1] == {"event": "disconnect", "successful": True}
    comet = [r for r in simulator.requests if "/cometd" in r.path and r.method == "POST"]
    paths = {r.path.removeprefix("/genesys/cometd") for r in comet}
    assert {"/handshake", "/connect", "/disconnect"} <= paths  # the message type appended
    assert {r.status for r in comet} == {200}
    assert simulator.pushes[pushed_at_start:] == []  # the client listened: nothing pushed
