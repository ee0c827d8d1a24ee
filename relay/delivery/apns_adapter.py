"""The aioapns adapter: every deviation from aioapns 4.0, and only here.

aioapns 4.0 is subclassed, not forked; no other module of the relay imports aioapns or h2.
relay.delivery.apns (ApnsClient) is built on this module's pool and protocol and uses only their
own methods; the two parts of a fix that live there are marked [client] below. Each override
covers one gap of aioapns 4.0 as published (github.com/Fatal1ty/aioapns, its source and issues):
1. no request deadline               -> a timer per stream answers "Timeout" and resets the stream
2. an error status without a body    -> streams resolve on END_STREAM, body or not
3. wait_for + connection_lost crash  -> no wait_for; futures are only resolved while not done;
                                        a caller's own cancel resets its stream at once
4. busy polling when streams run out -> in-flight bounded by a semaphore [client]; waits are on
                                        an event (RelayConnectionPool.acquire);
                                        a new connection is used only once APNs' SETTINGS (its
                                        stream limit) have arrived
4b. a stream limit that moves        -> StreamSlots follows SETTINGS_MAX_CONCURRENT_STREAMS as
                                        APNs moves it (1 on a new connection, the full limit
                                        after a success, 1 after a rejection); aioapns' pool
                                        keeps 2 streams when the limit rises with all in use
4c. h2 walks every stream per send -> CountedH2Connection bounds the count by the streams it
                                        holds, each dropped as it ends
5. one JWT per connection            -> one SharedJWT per app, refreshed every 45 min or on demand;
                                        each connection keeps the one it started with, so a
                                        rotated key (replace_credentials) reaches only new ones
6. GOAWAY / discard_connection       -> a GOAWAY'd connection is retired: no new streams, the
                                        ones above last_stream_id (never processed) answer
                                        `unprocessed` and are sent again at once on another
                                        connection [client], the rest drain
                                        (h2 would refuse their answers: see
                                        DrainingStateMachine); a send racing GOAWAY is sent
                                        again too; discard is idempotent
7. 10 s idle close                   -> connections stay open for an hour of idleness
8. a connection that only answers 500 -> retired after a streak (configurable) and replaced
Flow control is also acknowledged for response bodies, which aioapns never does (a long run of error
bodies would otherwise exhaust the connection window and hang every later answer).
Every aioapns internal relied upon here (conn, free_channels' replacement, the pool's _lock and
connections, the protocol constructor's arguments, ...) is named in
tests/delivery/test_aioapns_contract.py, which fails, naming it, if an aioapns upgrade changes it.

Over ~400 lines on purpose: one module owns the whole boundary with aioapns and h2, so that an
upgrade is reviewed in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import jwt
import orjson
import structlog
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsProductionClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import H2Error, NoAvailableStreamIDError
from h2.settings import SettingCodes
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

from relay.core.endpoint import Endpoint
from relay.core.model import ApnsResponse, Notification
from relay.core.push_types import topic_for
from relay.credentials.model import TokenCredentials
from relay.telemetry import metrics

log = structlog.get_logger("relay.apns")

JWT_REFRESH_AFTER_S = 45 * 60  # Apple: no more often than every 20 min, no less than every 60
JWT_MIN_FORCED_INTERVAL_S = 60  # a forced refresh (ExpiredProviderToken) at most once a minute
IDLE_CLOSE_S = 3600
STALLED_CONNECTION_TIMEOUTS = 3  # consecutive unanswered streams before a connection is replaced
DEFAULT_INTERNAL_ERROR_STREAK = 10  # consecutive 500s before a connection is replaced


class SharedJWT(AuthorizationHeaderProvider):
    """One provider token per app for all its connections: APNs counts a team's tokens together."""

    def __init__(
        self,
        credentials: TokenCredentials,
        app: str,
        clock: Callable[[], float] = time.time,
        *,
        counted: bool = True,
    ) -> None:
        self.credentials = credentials
        self.app = app
        self.clock = clock
        self.counted = counted  # False for a check's probe: not the app's delivery
        self.issued_at = 0.0
        self.header = ""

    def get_header(self) -> str:
        if self.clock() - self.issued_at >= JWT_REFRESH_AFTER_S:
            self._sign()
        return self.header

    def force_refresh(self) -> bool:
        """Sign anew after APNs said the token expired; False when one was just signed."""
        if self.clock() - self.issued_at < JWT_MIN_FORCED_INTERVAL_S:
            return False
        self._sign()
        return True

    def _sign(self) -> None:
        now = int(self.clock())
        token = jwt.encode(
            {"iss": self.credentials.team_id, "iat": now},
            self.credentials.key_pem,
            algorithm="ES256",
            headers={"kid": self.credentials.key_id},
        )
        self.issued_at = now
        self.header = f"bearer {token}"
        if self.counted:
            metrics.JWT_REFRESHES.labels(app=self.app).inc()
        log.info("jwt_signed", app=self.app, key_id=self.credentials.key_id)


class DrainingStateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, but still reading after a GOAWAY.

    h2 closes the whole connection on GOAWAY and treats any later frame as a protocol error;
    RFC 9113 section 6.8 lets the server still answer the streams up to last_stream_id, and a
    graceful GOAWAY does. Sending new streams stays refused.
    """

    DRAIN_INPUTS = frozenset(
        {
            ConnectionInputs.RECV_HEADERS,
            ConnectionInputs.RECV_DATA,
            ConnectionInputs.RECV_WINDOW_UPDATE,
            ConnectionInputs.RECV_PING,
            ConnectionInputs.RECV_SETTINGS,
            ConnectionInputs.RECV_RST_STREAM,
            ConnectionInputs.RECV_PRIORITY,
            ConnectionInputs.SEND_WINDOW_UPDATE,
            ConnectionInputs.SEND_RST_STREAM,
            ConnectionInputs.SEND_PING,
        }
    )

    def process_input(self, input_: ConnectionInputs) -> list[Any]:
        if self.state is ConnectionState.CLOSED and input_ in self.DRAIN_INPUTS:
            return []
        return super().process_input(input_)


class StreamSlots:
    """The streams one connection may open, against APNs' current SETTINGS_MAX_CONCURRENT_STREAMS.

    Counts streams in use rather than free ones, so the limit can move either way at any time:
    a drop below the streams in use just makes the connection busy until enough have ended.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.next_stream_id = 1
        self.closed: Exception | None = None

    @property
    def is_busy(self) -> bool:
        return self.in_use >= self.limit

    def acquire(self) -> int:
        """A stream id. The pool hands out only a connection with a free stream, and nothing
        awaits between that and this call, so the limit is never exceeded here."""
        if self.closed is not None:
            raise self.closed
        if self.next_stream_id > H2Connection.HIGHEST_ALLOWED_STREAM_ID:
            raise NoAvailableStreamIDError
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.in_use += 1
        return stream_id

    def release(self) -> None:
        self.in_use -= 1

    def destroy(self, exc: Exception) -> None:
        self.closed = exc


class CountedH2Connection(H2Connection):
    """h2's connection without its walk over every stream each time a stream starts.

    h2 4.x counts open outbound streams (send_headers' check against the peer's limit) by walking
    `streams`, dropping closed ones as it goes: at a thousand streams in flight, a thousand steps
    per send. The adapter drops each stream as it ends (forget_stream), so `streams` holds (nearly)
    only open ones and its length bounds their count: below the peer's limit that is enough to
    pass the check; at it, h2's own count decides, so the check is never looser than h2's.
    """

    @property
    def open_outbound_streams(self) -> int:
        held = len(self.streams)
        if held < self.remote_settings.max_concurrent_streams:
            return held
        return super().open_outbound_streams

    def forget_stream(self, stream_id: int) -> None:
        """Drop a closed stream now, as h2's count would (it remembers how it closed)."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by


class PlainHpackEncoder(Encoder):
    """HPACK without Huffman coding (a few more bytes per request, a third of the CPU), and each
    header's encoding reused while the dynamic table stays as it is.

    A request's headers are the same few fields every time: the constant ones (method, scheme,
    authority, topic, push type, priority) become indexed references after their first request,
    and the never-indexed ones (path, apns-id, expiration, authorization) differ only in their
    value. hpack searches both tables for every header of every request; here a constant field's
    bytes, and a never-indexed field's name part, are kept until the table changes (an entry added
    or the size changed), so a request costs a dictionary look-up per header. The bytes are
    exactly hpack's own (tests/test_apns_adapter.py compares them).
    Takes a list of HeaderTuple or (name, value) str pairs, as send_raw builds them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._indexed: dict[tuple[bytes, bytes], bytes] = {}  # a field's indexed representation
        # A never-indexed name's part of its literal, and the values the static table holds for it
        self._never_indexed_names: dict[bytes, tuple[bytes, frozenset[bytes]]] = {}
        # The table as the last encode left it (its size limit, its entries): another state
        # at the next one means it changed in between, and what is remembered is stale.
        self._table_seen = (self.header_table.maxsize, 0)

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        table = self.header_table
        parts: list[bytes] = []
        if table.resized:
            parts.append(self._encode_table_size_change())
            table.resized = False
            self._forget()
        elif (table.maxsize, len(table.dynamic_entries)) != self._table_seen:
            # Resized twice to one size between requests: hpack's flag then reads False, yet the
            # first resize may have evicted entries, moving every index after them.
            self._forget()
        for header in headers:
            name, value = _as_bytes(header[0]), _as_bytes(header[1])
            if isinstance(header, HeaderTuple) and not header.indexable:
                parts.append(self._never_indexed(name, value))
                continue
            known = self._indexed.get((name, value))
            if known is not None:
                parts.append(known)
                continue
            encoded = self.add((name, value), False, False)
            if encoded[0] & 0x80:  # an indexed representation: the table is unchanged
                self._indexed[(name, value)] = encoded
            else:  # added to the table: every index after it moved
                self._forget()
            parts.append(encoded)
        self._table_seen = (table.maxsize, len(table.dynamic_entries))
        return b"".join(parts)

    def _never_indexed(self, name: bytes, value: bytes) -> bytes:
        known = self._never_indexed_names.get(name)
        if known is None:
            if any(entry[0] == name for entry in self.header_table.dynamic_entries):
                return self.add((name, value), True, False)  # hpack's own choice
            static = HeaderTable.STATIC_TABLE_MAPPING.get(name)
            if static is not None:
                index = encode_integer(static[0], 4)
                index[0] |= 0x10  # never indexed
                known = (bytes(index), frozenset(static[1]))
            else:
                known = (b"\x10" + bytes(encode_integer(len(name), 7)) + name, frozenset())
            self._never_indexed_names[name] = known
        prefix, static_values = known
        if value in static_values:
            return self.add((name, value), True, False)  # a static entry: indexed
        return prefix + bytes(encode_integer(len(value), 7)) + value

    def _forget(self) -> None:
        self._indexed.clear()
        self._never_indexed_names.clear()


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


class _Stream:
    __slots__ = ("apns_id", "body", "future", "status", "timer", "unique_id")

    def __init__(self, future: asyncio.Future[ApnsResponse], timer: asyncio.TimerHandle) -> None:
        self.future = future
        self.timer = timer
        self.status = 0
        self.apns_id: str | None = None
        self.unique_id: str | None = None
        self.body = b""


class RelayClientProtocol(APNsProductionClientProtocol):
    """One HTTP/2 connection to APNs; every stream ends: answered, reset, timed out or closed."""

    INACTIVITY_TIME = IDLE_CLOSE_S
    INTERNAL_ERROR_STREAK = DEFAULT_INTERNAL_ERROR_STREAK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: CountedH2Connection = CountedH2Connection()
        # Pure-Python Huffman coding and header normalisation and re-validation were most of a
        # send's CPU. Every header here is built below from validated data (lower-case names;
        # payload._collapse_id checks the one free text), so none of them is needed.
        self.conn.encoder = PlainHpackEncoder()
        self.conn.state_machine = DrainingStateMachine()
        # In place of aioapns' free_channels (a ChannelPool); 1000 until APNs' SETTINGS arrive,
        # which the pool waits for before it uses the connection.
        self.slots = StreamSlots(1000)
        self.conn.config.validate_outbound_headers = False
        self.conn.config.normalize_outbound_headers = False
        self._flush_scheduled = False
        self.streams: dict[int, _Stream] = {}
        # Set once no new stream may start here (GOAWAY, closed, ids used up): the status-0
        # reason a send that still reaches this connection gets. The pool skips it from then on.
        self.retired_because: str | None = None
        self.consecutive_timeouts = 0
        self.consecutive_internal_errors = 0
        self.last_activity = 0.0
        self.on_stream_freed: Callable[[], None] = lambda: None
        # The provider token of the credentials this connection was opened with (None with a
        # certificate): APNs binds a connection to one key, so a rotation never changes it.
        self.jwt: SharedJWT | None = None
        self.credentials_generation = 0
        self.settings_received: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    @property
    def is_busy(self) -> bool:
        return self.retired_because is not None or self.slots.is_busy

    async def send_raw(
        self,
        notification: Notification,
        apns_id: str,
        deadline: float,
        authorization: str | None,
        on_wire: Callable[[], None],
    ) -> ApnsResponse:
        if self.retired_because is not None:
            return ApnsResponse(0, self.retired_because, unprocessed=True)
        try:
            stream_id = self.slots.acquire()
        except ConnectionClosed:
            return ApnsResponse(0, "ConnectionClosed", unprocessed=True)
        except NoAvailableStreamIDError:
            self._retire("StreamIdsExhausted")
            return ApnsResponse(0, "StreamIdsExhausted", unprocessed=True)
        headers: list[HeaderTuple | tuple[str, str]] = [
            (":method", "POST"),
            (":scheme", "https"),
            # Values that change on every request are never indexed: they would only churn the
            # HPACK table, and a device token does not belong in a compression context.
            NeverIndexedHeaderTuple(":path", f"/3/device/{notification.device_token}"),
            (":authority", self.APNS_SERVER),
            NeverIndexedHeaderTuple("apns-id", apns_id),
            ("apns-topic", topic_for(self.apns_topic, notification.push_type)),
            ("apns-push-type", notification.push_type),
            ("apns-priority", str(notification.priority)),
            NeverIndexedHeaderTuple("apns-expiration", str(notification.expires_at)),
        ]
        if notification.collapse_id:
            # Not indexed either: by default it is the event's service id, new on almost every
            # request, and each entry would push the constant fields out of the table.
            headers.append(NeverIndexedHeaderTuple("apns-collapse-id", notification.collapse_id))
        if authorization:
            # Kept out of the compression context, as h2's normalisation would have done.
            headers.append(NeverIndexedHeaderTuple("authorization", authorization))
        future: asyncio.Future[ApnsResponse] = self.loop.create_future()
        timer = self.loop.call_at(deadline, self._time_out, stream_id)
        self.streams[stream_id] = _Stream(future, timer)
        try:
            on_wire()
            self.conn.send_headers(stream_id, headers)
            self.conn.send_data(stream_id, notification.payload, end_stream=True)
            self.flush()
        except (H2Error, AttributeError, RuntimeError) as exc:
            # A ProtocolError here is h2 refusing a stream on a connection it knows is closed
            # (GOAWAY read, connection_lost not yet run); AttributeError/RuntimeError: the
            # transport went away under us. Either way the request never reached APNs.
            self._reset(
                stream_id,
                ApnsResponse(0, f"SendError:{type(exc).__name__}", unprocessed=True),
            )
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (its own wait_for, shutdown): free the stream now, not at the
            # deadline, and let APNs know.
            self._reset(stream_id, ApnsResponse(0, "Cancelled"))
            raise

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            log.warning("apns_protocol_error", error=str(exc))
            self.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            stream.status = int(value)
                        elif name == b"apns-id":
                            stream.apns_id = value.decode()
                        elif name == b"apns-unique-id":
                            stream.unique_id = value.decode()
            elif isinstance(event, DataReceived):
                # aioapns never does this: without it the connection window closes for good
                # after 64 KiB of error bodies and every later answer hangs.
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
            elif isinstance(event, StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, StreamReset):
                self._finish(event.stream_id, ApnsResponse(0, "StreamReset"))
            elif isinstance(event, RemoteSettingsChanged):
                limit = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if limit is not None and limit.new_value is not None:
                    self.slots.limit = limit.new_value
                    self.on_stream_freed()  # a raised limit frees streams for waiting sends
                if not self.settings_received.done():
                    self.settings_received.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self._go_away(event)
        self.flush()

    def _answer(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self.consecutive_timeouts = 0
        reason = timestamp = None
        if stream.body:
            try:
                body = orjson.loads(stream.body)
                reason, timestamp = body.get("reason"), body.get("timestamp")
            except (orjson.JSONDecodeError, AttributeError):
                reason = "UnreadableBody"
        if stream.status == 0:
            reason = "NoStatus"
        self._finish(
            stream_id,
            ApnsResponse(
                stream.status,
                reason,
                stream.apns_id,
                timestamp,
                apns_unique_id=stream.unique_id,
            ),
        )
        self._count_internal_errors(stream.status)

    def _count_internal_errors(self, status: int) -> None:
        """A connection that answers nothing but 500s has gone bad on APNs' side while others
        work (Pushy #408, node-apn #463): retire it, and a new one takes its place."""
        if status != 500:
            self.consecutive_internal_errors = 0
            return
        self.consecutive_internal_errors += 1
        if self.consecutive_internal_errors == self.INTERNAL_ERROR_STREAK:
            log.warning("apns_connection_replaced", internal_errors=self.INTERNAL_ERROR_STREAK)
            metrics.APNS_CONNECTIONS_REPLACED.labels(reason="InternalServerErrorStreak").inc()
            self.retire("InternalServerErrorStreak")

    def retire(self, reason: str) -> None:
        """No new streams here; the ones in flight finish, then the connection closes."""
        self._retire(reason)
        if not self.streams:
            self.close()

    def _finish(self, stream_id: int, response: ApnsResponse) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream.timer.cancel()
        self.conn.forget_stream(stream_id)
        if not stream.future.done():
            stream.future.set_result(response)
        self.slots.release()
        self.on_stream_freed()
        if self.retired_because is not None and not self.streams:
            self.close()

    def _reset(self, stream_id: int, response: ApnsResponse) -> None:
        """Give up on a stream we opened; tell APNs so it does not hold the stream open."""
        with contextlib.suppress(H2Error, AttributeError, RuntimeError):
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self.flush()
        self._finish(stream_id, response)

    def _time_out(self, stream_id: int) -> None:
        self._reset(stream_id, ApnsResponse(0, "Timeout"))
        self.consecutive_timeouts += 1
        if self.consecutive_timeouts >= STALLED_CONNECTION_TIMEOUTS:
            log.warning("apns_connection_stalled", timeouts=self.consecutive_timeouts)
            metrics.APNS_CONNECTIONS_REPLACED.labels(reason="Stalled").inc()
            self.close()

    def _go_away(self, event: ConnectionTerminated) -> None:
        """Streams above last_stream_id were never processed: answer them now as unprocessed,
        so that they are sent again at once on another connection (ApnsClient.send). The ones at
        or below it may still be answered; those left unanswered when the connection closes are
        at-least-once retries."""
        reason = "GoAway"
        if event.additional_data:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                reason = f"GoAway:{orjson.loads(event.additional_data).get('reason', '')}"
        log.warning("apns_goaway", error_code=str(event.error_code), reason=reason)
        self._retire(reason)
        last = event.last_stream_id or 0
        for stream_id in [s for s in self.streams if s > last]:
            self._finish(stream_id, ApnsResponse(0, reason, unprocessed=True))
        if not self.streams:
            self.close()

    def _retire(self, reason: str) -> None:
        """No new streams here; the streams already sent may still be answered."""
        if self.retired_because is None:
            self.retired_because = reason
            if self.on_connection_lost:
                self.on_connection_lost(self)

    def flush(self) -> None:
        """Write what h2 has to send at the end of this loop turn: every send of one turn (a
        claimed batch) then shares one TLS write instead of one each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        self._flush_scheduled = False
        self.refresh_inactivity_timer()
        if self.transport is not None and not self.transport.is_closing():
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)

    def refresh_inactivity_timer(self) -> None:
        # aioapns re-arms a timer on every write; one periodic check is enough.
        self.last_activity = self.loop.time()
        if self.inactivity_timer is None:
            self.inactivity_timer = self.loop.call_later(self.INACTIVITY_TIME, self._check_idle)

    def _check_idle(self) -> None:
        idle = self.loop.time() - self.last_activity
        if idle >= self.INACTIVITY_TIME:
            self.close()
        else:
            self.inactivity_timer = self.loop.call_later(
                self.INACTIVITY_TIME - idle, self._check_idle
            )

    def close(self) -> None:
        self._retire("ConnectionClosed")
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        self._retire("ConnectionClosed")
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.settings_received.done():
            # Lost before APNs' SETTINGS: with TLS 1.3 a refused client certificate arrives
            # here, after the handshake completed on our side; create_connection must see it.
            self.settings_received.set_exception(
                exc or ConnectionResetError("closed before SETTINGS")
            )
            self.settings_received.exception()  # retrieved: nobody may be waiting any more
        if self.on_connection_lost:
            self.on_connection_lost(self)
        for stream_id in list(self.streams):
            self._finish(stream_id, ApnsResponse(0, "ConnectionClosed"))
        self.slots.destroy(ConnectionClosed(str(exc)))
        self.on_stream_freed()


class RelayConnectionPool(APNsBaseConnectionPool):
    """aioapns' pool with an endpoint of our choosing and no busy-wait when streams run out.

    `connections` holds the ones new streams may use; a retired connection (GOAWAY, closing,
    credentials replaced) moves to `retiring` until it is gone, so it neither takes streams nor
    counts against the connection limit.
    """

    def __init__(
        self,
        app: str,
        topic: str,
        endpoint: Endpoint,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        internal_error_streak: int = DEFAULT_INTERNAL_ERROR_STREAK,
        jwt: SharedJWT | None = None,
        *,
        counted: bool = True,
    ) -> None:
        super().__init__(topic=topic, max_connections=max_connections)
        self.app = app
        self.counted = counted  # False for a check's probe: its connection is not the app's
        self.topic = topic
        self.protocol_class = type(
            "EndpointProtocol",
            (RelayClientProtocol,),
            {
                "APNS_SERVER": endpoint.host,
                "APNS_PORT": endpoint.port,
                "INTERNAL_ERROR_STREAK": internal_error_streak,
            },
        )
        self.ssl_context = ssl_context
        self.jwt = jwt
        # Counts replace_credentials() calls: a connection opened with older credentials is
        # retired rather than used.
        self.credentials_generation = 0
        self.stream_freed = asyncio.Event()
        self.retiring: set[RelayClientProtocol] = set()

    def replace_credentials(self, ssl_context: ssl.SSLContext, jwt: SharedJWT | None) -> None:
        """New connections use these; every open one is retired: its streams in flight finish
        with the credentials they were sent with, then it closes."""
        self.ssl_context = ssl_context
        self.jwt = jwt
        self.credentials_generation += 1
        for connection in list(cast(list[RelayClientProtocol], self.connections)):
            connection.retire("CredentialsReplaced")
        self.stream_freed.set()  # a waiter may open a connection with the new credentials

    async def create_connection(self) -> RelayClientProtocol:
        factory = partial(
            self.protocol_class, self.topic, self.loop, cast(Any, self.discard_connection)
        )
        ssl_context, jwt, generation = self.ssl_context, self.jwt, self.credentials_generation
        _, protocol = await self.loop.create_connection(
            factory,
            host=self.protocol_class.APNS_SERVER,
            port=self.protocol_class.APNS_PORT,
            ssl=ssl_context,
        )
        protocol = cast(RelayClientProtocol, protocol)
        protocol.jwt, protocol.credentials_generation = jwt, generation
        try:
            # Until APNs' SETTINGS arrive the stream limit is unknown (aioapns assumes 1000);
            # a burst sent before then goes over the real limit and the connection is lost.
            await protocol.settings_received
        except BaseException:
            protocol.close()
            raise
        protocol.on_stream_freed = self.stream_freed.set
        if self.counted:
            metrics.APNS_CONNECTIONS.labels(app=self.app).set(len(self.connections) + 1)
        log.info("apns_connected", app=self.app, connections=len(self.connections) + 1)
        return protocol

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        connection = cast(RelayClientProtocol, connection)
        if connection in self.connections:  # aioapns #55: connection_lost may come twice
            self.connections.remove(connection)
        if connection.lost.done():
            self.retiring.discard(connection)
        else:
            self.retiring.add(connection)
        if self.counted:
            metrics.APNS_CONNECTIONS.labels(app=self.app).set(len(self.connections))
        self.stream_freed.set()  # a waiter may now open a connection in its place

    def least_loaded(self) -> RelayClientProtocol | None:
        """The open connection with the fewest streams in use, if any has one free.

        Spreading the load matters because APNs drops a connection to one stream after any
        rejected request until its next success: a connection carrying everything would then
        stall everything, one carrying a share stalls only that share.
        """
        free = [c for c in cast(list[RelayClientProtocol], self.connections) if not c.is_busy]
        return min(free, key=lambda c: c.slots.in_use, default=None)

    async def acquire(self) -> RelayClientProtocol:
        while True:
            if (connection := self.least_loaded()) is not None:
                return connection
            async with self._lock:
                if (connection := self.least_loaded()) is not None:
                    return connection
                if len(self.connections) < self.max_connections:
                    connection = await self.create_connection()
                    if connection.credentials_generation != self.credentials_generation:
                        # Opened with credentials replaced while it connected.
                        connection.retire("CredentialsReplaced")
                        continue
                    self.connections.append(connection)
                    return connection
            self.stream_freed.clear()
            await self.stream_freed.wait()

    async def close_all(self, within_s: float) -> None:
        """Close every connection, retiring ones included; wait (bounded) until they are gone."""
        connections = [*cast(list[RelayClientProtocol], self.connections), *self.retiring]
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=within_s)
