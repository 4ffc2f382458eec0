#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target (fuzz/corpus/<target>/):
valid packets, frames and files, written by hand from the formats, plus a
few near misses. Run from anywhere; it rewrites the seed files it names and
leaves any other file (inputs added from a fuzz finding) alone."""

import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- MQTT -----------------------------------------------------------------
def varint(n):
    out = b""
    while True:
        b = n % 128
        n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(p=b""):
    return varint(len(p)) + p


connect311 = packet(0x10, s("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60) + s("c1") + s("us") + s("pw"))
connect5 = packet(
    0x10,
    s("MQTT") + bytes([5, 0x0E]) + struct.pack(">H", 10)
    + props(b"\x11\x00\x00\x00\x1e") + s("c")
    + props(b"\x18\x00\x00\x00\x05") + s("t") + s("x"),
)
pub0 = packet(0x30, s("a/b") + b"hello")
pub1_311 = packet(0x33, s("a/b") + struct.pack(">H", 10) + b"{\"t\":21.5}")
pub1_5 = packet(
    0x32,
    s("devices/d1/telemetry") + struct.pack(">H", 7)
    + props(b"\x01\x01" + b"\x03" + s("application/json") + b"\x26" + s("k") + s("v"))
    + b"{\"t\":1}",
)
sub311 = packet(0x82, struct.pack(">H", 1) + s("a/+") + b"\x01" + s("#") + b"\x00")
sub5 = packet(0x82, struct.pack(">H", 1) + props(b"\x0b\x05") + s("$share/g/a/#") + b"\x2e")
unsub = packet(0xA2, struct.pack(">H", 2) + s("a/+"))
puback5 = packet(0x40, struct.pack(">H", 7) + b"\x10" + props())
pubrel = packet(0x62, struct.pack(">H", 9))
ping = b"\xc0\x00"
disc5 = packet(0xE0, b"\x04" + props(b"\x11\x00\x00\x00\x00"))
auth5 = packet(0xF0, b"\x18" + props(b"\x15" + s("SCRAM")))

put("fuzz_mqtt_v311", "connect", connect311)
put("fuzz_mqtt_v311", "connect-publish-subscribe", connect311 + pub1_311 + sub311)
put("fuzz_mqtt_v311", "publish-qos0", pub0)
put("fuzz_mqtt_v311", "subscribe-unsubscribe-ping", sub311 + unsub + ping + b"\xe0\x00")
put("fuzz_mqtt_v311", "pubrel-partial", pubrel + pub1_311[:5])
put("fuzz_mqtt_v5", "connect", connect5)
put("fuzz_mqtt_v5", "connect-publish-subscribe", connect5 + pub1_5 + sub5)
put("fuzz_mqtt_v5", "publish-props", pub1_5)
put("fuzz_mqtt_v5", "acks-disconnect", puback5 + pubrel + ping + disc5)
put("fuzz_mqtt_v5", "auth-unsubscribe", auth5 + packet(0xA2, struct.pack(">H", 2) + props() + s("a/+")))

# --- CoAP -----------------------------------------------------------------
def coap(ty, code, mid, token, options, payload=b""):
    out = bytes([0x40 | (ty << 4) | len(token), code]) + struct.pack(">H", mid) + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        out += opt(number - last, value)
        last = number
    if payload:
        out += b"\xff" + payload
    return out


def nib(v):
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack(">H", v - 269)


def opt(delta, value):
    dn, dx = nib(delta)
    ln, lx = nib(len(value))
    return bytes([(dn << 4) | ln]) + dx + lx + value


GET, POST, PUT = 1, 2, 3
path = [(11, b"ps"), (11, b"devices"), (11, b"d1")]
query = [(15, b"u=dev"), (15, b"p=secret")]
put("fuzz_coap", "get-observe", coap(0, GET, 0x1234, b"\x01\x02", path + query + [(6, b"")]))
put("fuzz_coap", "post-json", coap(0, POST, 7, b"\xaa", path + query + [(12, b"\x32")], b'{"t":21.5}'))
put("fuzz_coap", "put-block1", coap(1, PUT, 8, b"", path + [(27, b"\x0e"), (60, b"\x04\x00")], b"x" * 64))
put("fuzz_coap", "get-block2-well-known", coap(0, GET, 9, b"t", [(11, b".well-known"), (11, b"core"), (23, b"\x16")]))
put("fuzz_coap", "long-option", coap(1, GET, 10, b"12345678", [(11, b"p" * 300), (2000, b"\x01")]))
put("fuzz_coap", "ping", coap(0, 0, 11, b"", []))
put("fuzz_coap", "ack-content", coap(2, 0x45, 12, b"\x01", [(12, b""), (4, b"\x01\x02\x03\x04")], b"ok"))

# --- DL/T 645 ---------------------------------------------------------------
def dlt(address, control, data, preamble=4):
    body = b"\x68" + bytes(address) + b"\x68" + bytes([control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


meter = [0x01, 0, 0, 0, 0, 0]
di = lambda d: list(struct.pack("<I", d))
put("fuzz_dlt645", "read-voltage", dlt(meter, 0x11, di(0x02010100)))
put("fuzz_dlt645", "answer-voltage", dlt(meter, 0x91, di(0x02010100) + [0x20, 0x22]))
put("fuzz_dlt645", "answer-energy-negative", dlt(meter, 0x91, di(0x00000000) + [0x45, 0x23, 0x01, 0x80]))
put("fuzz_dlt645", "answer-date-time", dlt(meter, 0x91, di(0x04000101) + [0x03, 0x07, 0x12, 0x26]) + dlt(meter, 0x91, di(0x04000102) + [0x30, 0x15, 0x08], 0))
put("fuzz_dlt645", "answer-more-and-error", dlt([0xAA] * 6, 0xB1, di(0x04000401) + [0x12, 0x34, 0x56, 0x78, 0x90, 0x12]) + dlt(meter, 0xD1, [0x02], 1))
put("fuzz_dlt645", "garbage-then-frame", b"\x68\x00\x68\x12" + dlt(meter, 0x91, di(0x02800002) + [0x00, 0x50]))

# --- Modbus -------------------------------------------------------------------
# Layout (fuzz_modbus.rs): points n-1, then per point: kind (bits 0-1 table
# coil/di/ir/hr, bit 2 register bit), address, [bit], type byte (bits 0-2
# type bool/u16/i16/u32/i32/f32/f64/string, bit 3 default type, bit 4 byte
# order little, bit 5 word order little, bit 6 length follows, bit 7
# scale), [length]; then per coalesced read: how (top 3 bits: size, low 3
# bits: response kind), [size], words (u16 LE); bits come from what is left.
def mb_point(table, address, type_byte, bit=None, length=None):
    out = bytes([table | (4 if bit is not None else 0), address])
    if bit is not None:
        out += bytes([bit])
    out += bytes([type_byte | (64 if length is not None else 0)])
    if length is not None:
        out += bytes([length])
    return out


def words(*ws):
    return b"".join(struct.pack("<H", w) for w in ws)


put("fuzz_modbus", "hr-u16-i32-f32", bytes([2]) + mb_point(3, 0, 1) + mb_point(3, 1, 4) + mb_point(3, 3, 5)
    + b"\xff" + words(215, 0xFFFF, 0xFFFE, 0x41AC, 0x0000))
put("fuzz_modbus", "ir-little-f64-string", bytes([1]) + mb_point(2, 10, 6 | 16 | 32) + mb_point(2, 20, 7, length=3)
    + b"\xff" + words(0, 0, 0, 0x4035) + b"\xff" + words(0x6869, 0x2100, 0))
put("fuzz_modbus", "coils-and-bits", bytes([2]) + mb_point(0, 0, 8) + mb_point(0, 5, 8) + mb_point(3, 7, 8, bit=15)
    + b"\xff\xff" + words(0x8001) + b"\x21")
put("fuzz_modbus", "short-answer", bytes([0]) + mb_point(3, 0, 3) + b"\x3f" + words(1))
put("fuzz_modbus", "wrong-function", bytes([0]) + mb_point(2, 0, 1) + b"\x07" + words(1))

# --- process functions ----------------------------------------------------------
# The first byte picks the line limit (byte % 5: 1, 2, 7, 64, 4096 bytes)
# and the read size (byte / 5 % 9 + 1).
def lines(*objs):
    return b"".join((json.dumps(o) if not isinstance(o, bytes) else o.decode()).encode() + b"\n" for o in objs)


put("fuzz_function_wire", "answer", bytes([4]) + lines({"id": 1, "messages": [{"topic": "a", "payload": "x"}]}))
put("fuzz_function_wire", "answer-all-fields", bytes([9]) + lines({"id": 1, "messages": [
    {"topic": "b", "payload_base64": "/wAB", "content_type": "application/octet-stream",
     "user_properties": [["k", "v"]], "qos": 0, "retain": True}]}))
put("fuzz_function_wire", "log-stale-error", bytes([14]) + b"starting up\r\n" + lines({"id": 2, "messages": []}, {"id": 1, "error": "too hot"}))
put("fuzz_function_wire", "bad-messages", bytes([19]) + lines({"id": 1, "messages": [{"topic": "t", "payload": "a", "payload_base64": "YQ=="}]},
    {"id": 1, "messages": [{"topic": "t", "payload": "x", "qos": 3}]}) + b"{\"id\": 1")
put("fuzz_function_wire", "long-line-cut", bytes([3]) + b"x" * 100 + b"\n" + lines({"id": 1, "messages": []}))

# --- queue recovery ---------------------------------------------------------------
# Layout (fuzz_queue_recovery.rs): flags (1 cursor, 2 huge cursor, 4 huge
# first seq), [cursor acked, next], first seq, segments-1, then per segment:
# records, per record (topic length, topic, payload length, payload, time),
# damage offset (u16 LE), damage (0 none, 1 cut, 2 flip [xor], 3 garbage
# [n, bytes], 4 raw [n, bytes]), gap to the next segment's first seq.
def rec(topic, payload, time=1):
    return bytes([len(topic)]) + topic + bytes([len(payload)]) + payload + bytes([time])


def seg(records, damage=b"\x00\x00\x00", gap=0):
    return bytes([len(records)]) + b"".join(records) + damage + bytes([gap])


r = [rec(b"t/1", b"{\"v\":1}"), rec(b"t/2", b"hello"), rec(b"", b"")]
put("fuzz_queue_recovery", "intact", b"\x00" + b"\x01" + b"\x01" + seg(r) + seg(r[:1]))
put("fuzz_queue_recovery", "torn-tail", b"\x00" + b"\x01" + b"\x01" + seg(r) + seg(r, struct.pack("<H", 40) + b"\x01"))
put("fuzz_queue_recovery", "flipped-sealed", b"\x00" + b"\x01" + b"\x02" + seg(r, struct.pack("<H", 30) + b"\x02\x40") + seg(r[:2]) + seg(r))
put("fuzz_queue_recovery", "cursor-and-garbage", b"\x01\x02\x05" + b"\x01" + b"\x01" + seg(r, b"\x00\x00\x03\x05abcde") + seg(r))
put("fuzz_queue_recovery", "raw-segment", b"\x00" + b"\x03" + b"\x00" + seg([], b"\x00\x00\x04\x10" + b"\x12" + b"\x00" * 15))
