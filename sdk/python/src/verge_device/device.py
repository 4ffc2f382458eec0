"""`Device`: one device program's connection to its Verge node.

Built on paho-mqtt 2.x (callback API version 2, MQTT 5). paho's network
thread (`loop_start`) reads and reconnects with backoff; the SDK's own
dispatch thread runs command handlers and delta callbacks, so a slow handler
never stalls the network loop and a handler may itself call `get_shadow` or
`update_reported`. Anything the node sends that the SDK cannot read is
logged and ignored: nothing raises in paho's thread.
"""

import collections
import itertools
import json
import logging
import queue
import ssl
import threading
import time
import urllib.parse
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import topics
from .errors import ConnectError, ShadowRejected, Timeout, VergeError

log = logging.getLogger("verge_device")

# CONNACK reason codes (MQTT 5) that mean the node refused the credentials.
_BAD_CREDENTIALS = {134: "bad user name or password", 135: "not authorized"}
# Commands whose replies are remembered for duplicates (at-least-once delivery).
_REPLY_CACHE = 1000
# Callbacks waiting for the dispatch thread at most; more are dropped and counted.
_DISPATCH_QUEUE = 1000
# How long the node keeps the session (and QoS 1 messages for it) after a drop.
_SESSION_EXPIRY_S = 300
# Messages published while connected that paho holds until their PUBACK (it
# sends them again first after a reconnect); past it they wait in the SDK's
# offline buffer.
_IN_FLIGHT = 100


class Device:
    """A device connected to a Verge node with its name and secret.

    `url` is `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]`
    (TLS, default 8883; `ca_file` names the CA bundle that signed the
    node's certificate, else the system's CAs are used). The client id is
    the device's name (or `client_id`, which must start with `{device}:`, to
    run a second program as the same device). `offline_buffer` bounds the QoS 1 messages (telemetry,
    events, replies, shadow requests) kept while the connection is down (or
    while paho holds `_IN_FLIGHT` unacknowledged ones); when it is full the
    oldest waiting message is dropped and counted in `dropped`, as the Rust
    SDK does. They are sent in order when the connection is back.
    """

    def __init__(self, url, device, secret, ca_file=None, keep_alive=30, offline_buffer=1000,
                 reconnect_min_s=1, reconnect_max_s=30, client_id=None):
        topics.check_level("device name", device)
        client_id = client_id or device
        if client_id != device and not client_id.startswith(device + ":"):
            raise ValueError(f"client_id must be {device!r} or start with {device + ':'!r} "
                             "(the node binds client ids to the device's name)")
        if offline_buffer < 1:
            raise ValueError("offline_buffer must be at least 1")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"url {url!r} must be mqtt://host[:port] or mqtts://host[:port]")
        self.device = device
        self.host = parsed.hostname
        self.port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        self.keep_alive = keep_alive
        self.dropped = 0  # oldest messages dropped from the full offline buffer
        self.dropped_callbacks = 0  # commands/deltas dropped: the dispatch queue was full

        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connack = queue.Queue()
        self._subscribed = threading.Event()
        self._ever_connected = False
        self._closed = False
        self._handlers = {}
        self._delta_callbacks = []
        self._replies = collections.OrderedDict()  # command id -> (topic kind, payload) or None while running
        self._pending = {}  # client token -> [event, answer topic, body]
        self._pending_fifo = {"get": collections.deque(), "update": collections.deque()}
        # The offline buffer and the connected flag change under _buf_lock
        # (never held while calling paho; _publish may run with _lock held).
        self._buf_lock = threading.Lock()
        self._offline = collections.deque()  # (topic, payload, props) waiting for the connection
        self._offline_max = offline_buffer
        self._tokens = itertools.count(1)
        self._token_prefix = uuid.uuid4().hex[:8]

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=True)
        c.username_pw_set(device, secret)
        if parsed.scheme == "mqtts":
            c.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
        c.max_queued_messages_set(_IN_FLIGHT)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._client = c

        self._dispatch = queue.Queue(_DISPATCH_QUEUE)
        self._worker = threading.Thread(target=self._run_dispatch, name=f"verge-device-{device}",
                                        daemon=True)
        self._worker.start()

    # -- connection -------------------------------------------------------

    def connect(self, timeout=10):
        """Connect; returns once the node accepted the device. Raises
        `ConnectError` when the node refuses it (bad credentials say so) or
        cannot be reached within `timeout` seconds. After this the connection
        is kept: a lost one is reconnected with backoff."""
        if self._closed:
            raise VergeError("the device is closed")
        deadline = time.monotonic() + timeout
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = _SESSION_EXPIRY_S
        last, delay = None, 0.2
        while True:
            try:
                self._client.connect(self.host, self.port, self.keep_alive,
                                     clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                                     properties=props)
                break
            except (OSError, ssl.SSLError) as e:
                last = e
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError(f"cannot reach {self.host}:{self.port} within {timeout} s: {last}")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 2)
        self._client.loop_start()
        try:
            rc = self._connack.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self._client.loop_stop()
            raise ConnectError(f"no CONNACK from {self.host}:{self.port} within {timeout} s") from None
        if rc.is_failure:
            self._client.disconnect()
            self._client.loop_stop()
            why = _BAD_CREDENTIALS.get(rc.value)
            if why:
                raise ConnectError(f"the node refused device {self.device!r}'s credentials ({why})",
                                   rc.value)
            raise ConnectError(f"the node refused the connection: {rc}", rc.value)
        # Answers to requests made right away must not arrive before the
        # subscriptions are in place.
        if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise ConnectError(f"the node did not acknowledge the subscriptions within {timeout} s")
        return self

    @property
    def connected(self):
        """Whether the connection is up now."""
        return self._connected.is_set()

    def wait_connected(self, timeout):
        """Wait until the connection is up; whether it is."""
        return self._connected.wait(timeout)

    def close(self, timeout=5):
        """Wait up to `timeout` s for buffered messages to be acknowledged
        (while connected), then disconnect and stop the threads."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        while self.connected and self._unacknowledged() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()
        try:
            self._dispatch.put_nowait(None)
        except queue.Full:
            pass
        self._worker.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _unacknowledged(self):
        # paho keeps every QoS 1 message here until its PUBACK; the rest
        # wait in the offline buffer.
        with self._buf_lock:
            waiting = len(self._offline)
        return waiting + len(getattr(self._client, "_out_messages", ()))

    def _on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            log.warning("verge_device %s: connection refused: %s", self.device, rc)
        else:
            d = self.device
            subs = [(topics.command_filter(d), 1)]
            subs += [(topics.shadow(d, op), 1) for op in topics.SHADOW_ANSWERS]
            client.subscribe(subs)
            with self._buf_lock:
                self._connected.set()
            log.info("verge_device %s: connected to %s:%s", d, self.host, self.port)
            # paho sends its unacknowledged messages again after this
            # callback; the buffered ones follow on their first PUBACK, so
            # the order holds.
            if not getattr(client, "_out_messages", None):
                self._flush()
        if not self._ever_connected:
            self._connack.put(rc)
        if not rc.is_failure:
            self._ever_connected = True

    def _on_subscribe(self, client, userdata, mid, reason_codes, props):
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.warning("verge_device %s: the node refused %d of the subscriptions (%s); "
                        "check the device's ACL", self.device, len(refused), refused[0])
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, rc, props):
        with self._buf_lock:
            self._connected.clear()
        if not self._closed:
            log.warning("verge_device %s: disconnected (%s); reconnecting", self.device, rc)

    # -- sending ----------------------------------------------------------

    def _publish(self, topic, payload, props=None):
        msg = (topic, payload, props)
        with self._buf_lock:
            # While disconnected, or while older messages still wait, it
            # waits too (in order).
            if not self._connected.is_set() or self._offline:
                self._buffer(msg)
                return True
        info = self._client.publish(topic, payload, qos=1, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            # paho holds _IN_FLIGHT unacknowledged messages: wait for a PUBACK.
            with self._buf_lock:
                self._buffer(msg)
            return True
        # MQTT_ERR_NO_CONN: paho keeps QoS 1 messages and sends them on reconnect.
        return info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)

    def _buffer(self, msg):
        """Keep `msg` in the offline buffer, dropping the oldest when it is
        full. Called with _buf_lock held."""
        if len(self._offline) >= self._offline_max:
            oldest = self._offline.popleft()
            self.dropped += 1  # only changed here, under _buf_lock
            log.warning("verge_device %s: offline buffer full, the oldest message (%s) dropped",
                        self.device, oldest[0])
        self._offline.append(msg)

    def _flush(self):
        """Send the offline buffer in order while connected, until it is
        empty or paho holds _IN_FLIGHT messages. Runs in paho's thread only
        (on connect and on each PUBACK), never with the lock held while
        calling paho (paho calls on_publish with its own lock held)."""
        while True:
            with self._buf_lock:
                if not self._connected.is_set() or not self._offline:
                    return
                msg = self._offline[0]
            info = self._client.publish(msg[0], msg[1], qos=1, properties=msg[2])
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                return  # the next PUBACK flushes again
            with self._buf_lock:
                if self._offline and self._offline[0] is msg:
                    self._offline.popleft()
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("verge_device %s: a buffered message on %s was refused: %s",
                            self.device, msg[0], info.rc)

    def _on_publish(self, client, userdata, mid, reason_code, props):
        self._flush()

    def send_telemetry(self, readings):
        """Publish readings (a JSON object) on `devices/{d}/telemetry`, QoS 1.
        While the connection is down it waits in the offline buffer (a full
        buffer drops its oldest message, counted in `dropped`). Returns False
        only when paho refuses the message (e.g. too large)."""
        if not isinstance(readings, dict):
            raise TypeError("telemetry must be a dict (a JSON object)")
        return self._publish(topics.telemetry(self.device), json.dumps(readings))

    def send_event(self, kind, payload=None):
        """Publish an event on `devices/{d}/events/{kind}` (payload as JSON), QoS 1."""
        topics.check_level("event kind", kind)
        return self._publish(topics.event(self.device, kind), json.dumps(payload))

    # -- commands ---------------------------------------------------------

    def command(self, name):
        """Decorator: `@device.command("reboot")` registers the handler of a command."""
        def register(handler):
            self.on_command(name, handler)
            return handler
        return register

    def on_command(self, name, handler):
        """`handler(payload)` runs for every command `name` (payload parsed
        from JSON, else the text); what it returns (JSON-serializable) is the
        reply, what it raises fails the command with the error's text. A
        command delivered again with the same id is answered with the first
        reply; the handler is not run again. `name="*"` handles commands no
        other handler has, as `handler(name, payload)`."""
        if name != "*":
            topics.check_level("command name", name)
        with self._lock:
            self._handlers[name] = handler

    def _on_command(self, name, cid, msg):
        props = msg.properties
        response = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        with self._lock:
            if cid in self._replies:
                cached = self._replies[cid]
                self._replies.move_to_end(cid)
                if cached is None:  # still running; its reply follows
                    return
                log.info("verge_device %s: command %s again, sending its reply again", self.device, cid)
                self._send_reply(cid, cached[0], cached[1], response, correlation)
                return
            self._replies[cid] = None
            while len(self._replies) > _REPLY_CACHE:
                self._replies.popitem(last=False)
            handler = self._handlers.get(name)
            wildcard = self._handlers.get("*")
        payload = _decode(msg.payload)

        def run():
            try:
                if handler is not None:
                    result = handler(payload)
                elif wildcard is not None:
                    result = wildcard(name, payload)
                else:
                    raise VergeError(f"no handler for command {name!r}")
                outcome = ("ok", json.dumps(result))
            except Exception as e:  # noqa: BLE001 - the handler's failure is the reply
                outcome = ("failed", str(e) or type(e).__name__)
            with self._lock:
                if cid in self._replies:
                    self._replies[cid] = outcome
            self._send_reply(cid, outcome[0], outcome[1], response, correlation)

        if not self._submit(run, f"command {cid}"):
            with self._lock:
                self._replies.pop(cid, None)  # a later delivery may run it

    def _send_reply(self, cid, kind, body, response, correlation):
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        if kind == "ok":
            topic = response or topics.reply(self.device, cid)
        else:
            topic = topics.failed_reply(self.device, cid)
        self._publish(topic, body, props)

    # -- shadow -----------------------------------------------------------

    def get_shadow(self, timeout=5):
        """The shadow document (`desired`, `reported`, `metadata`, `version`,
        `timestamp`) as the node holds it. Raises `ShadowRejected` or `Timeout`."""
        return self._shadow_request("get", {}, timeout)

    def update_reported(self, state, version=None, timeout=5):
        """Merge `state` into `reported` (a `None` value removes the key);
        with `version`, only if the shadow is at that version. Returns the new
        document. Raises `ShadowRejected` (e.g. `version_conflict`) or `Timeout`."""
        return self._update("reported", state, version, timeout)

    def update_desired(self, state, version=None, timeout=5):
        """Like `update_reported`, for `desired` (a device may change what it wants too)."""
        return self._update("desired", state, version, timeout)

    def on_delta(self, callback):
        """`callback(state, version)` runs when the node says desired keys
        differ from reported (`state`: those keys with their desired values)."""
        with self._lock:
            self._delta_callbacks.append(callback)
        return callback

    def _update(self, side, state, version, timeout):
        if not isinstance(state, dict):
            raise TypeError(f"{side} must be a dict")
        body = {side: state}
        if version is not None:
            body["version"] = int(version)
        return self._shadow_request("update", body, timeout)

    def _shadow_request(self, op, body, timeout):
        token = f"{self._token_prefix}-{next(self._tokens)}"
        body = dict(body, client_token=token)
        waiter = [threading.Event(), None, None]
        with self._lock:
            self._pending[token] = waiter
            self._pending_fifo[op].append(token)
        try:
            if not self._publish(topics.shadow(self.device, op), json.dumps(body)):
                raise VergeError(f"the request on $shadow/{self.device}/{op} was refused")
            if not waiter[0].wait(timeout):
                raise Timeout(f"no answer to $shadow/{self.device}/{op} within {timeout} s")
        finally:
            with self._lock:
                self._pending.pop(token, None)
                try:
                    self._pending_fifo[op].remove(token)
                except ValueError:
                    pass
        answer, doc = waiter[1], waiter[2]
        if answer.endswith("rejected"):
            raise ShadowRejected(str(doc.get("code", "rejected")), str(doc.get("message", "")),
                                 doc.get("version"))
        return doc

    def _on_shadow(self, answer, msg):
        doc = json.loads(msg.payload)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if answer == "update/delta":
            state = doc.get("state")
            if not isinstance(state, dict):
                raise ValueError("a delta without a `state` object")
            version = doc.get("version")
            with self._lock:
                callbacks = list(self._delta_callbacks)
            for cb in callbacks:
                self._submit(lambda cb=cb: cb(state, version), "delta callback")
            return
        op = answer.split("/")[0]
        token = doc.get("client_token")
        with self._lock:
            if token is None or token not in self._pending:
                # An answer without our token: the oldest request of its kind
                # (the node answers in order).
                fifo = self._pending_fifo[op]
                if token is not None or not fifo:
                    return  # someone else's request, or one that timed out
                token = fifo[0]
            waiter = self._pending.get(token)
            if waiter is None or waiter[0].is_set():
                return
            waiter[1], waiter[2] = answer, doc
            try:
                self._pending_fifo[op].remove(token)
            except ValueError:
                pass
            waiter[0].set()

    # -- paho's thread ----------------------------------------------------

    def _on_message(self, client, userdata, msg):
        try:
            command = topics.parse_command(self.device, msg.topic)
            if command is not None:
                self._on_command(command[0], command[1], msg)
                return
            answer = topics.parse_shadow(self.device, msg.topic)
            if answer is not None:
                self._on_shadow(answer, msg)
                return
            log.debug("verge_device %s: ignoring a message on %s", self.device, msg.topic)
        except Exception as e:  # noqa: BLE001 - bad input from the server never raises here
            log.warning("verge_device %s: ignoring a bad message on %s: %s", self.device,
                        msg.topic, e)

    def _submit(self, fn, what):
        try:
            self._dispatch.put_nowait(fn)
            return True
        except queue.Full:
            with self._lock:
                self.dropped_callbacks += 1
            log.warning("verge_device %s: dispatch queue full, %s dropped", self.device, what)
            return False

    def _run_dispatch(self):
        while True:
            fn = self._dispatch.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # noqa: BLE001 - a callback's bug must not stop the device
                log.exception("verge_device %s: a callback failed", self.device)


def _decode(payload):
    """A command payload: JSON when it parses, else the text."""
    text = payload.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
