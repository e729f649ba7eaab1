"""etcd's Txn, Range and LeaseKeepAlive messages encoded and decoded by hand.

The only protobuf for Python 3.11 that etcd3 0.12.0 imports with (3.20.x) is the pure-
Python one: building and parsing a 128-operation TxnRequest message by message cost 3x
the CPU etcd itself spent applying it, and a range read ~0.1 ms per key (measured:
scripts/bench_sync.py). These are the hot paths, so they go on the wire directly, down
to the fields we read; a RangeRequest too, so that reading needs neither etcd3's generated
modules nor protobuf at all (importing them was a fifth of an unchanged sync restart).
tests/unit/test_wire.py checks each against the generated classes.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.core.errors import StoreError
from services.core.kv import KeyValue, Op, Put, Unchanged

_SMALL = [bytes((n,)) for n in range(0x80)]  # a varint below 128 is its one byte


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    out = bytearray()
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _sized(_varint(number << 3 | 2), payload)


def _sized(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag (precomputed), its length, its bytes."""
    return tag + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


# Field tags (number << 3 | wire type), computed once: a first sync encodes 70,000
# operations and as many guards.
_COMPARE, _SUCCESS = b"\x0a", b"\x12"  # TxnRequest.compare (1), .success (2)
_MOD_EQUAL = _int_field(2, 2)  # Compare.target = MOD; result EQUAL (0) is the default
_COMPARE_KEY, _MOD_REVISION = b"\x1a", b"\x30"  # Compare.key (3), .mod_revision (6)
_PUT, _DELETE = b"\x12", b"\x1a"  # RequestOp.request_put (2), .request_delete_range (3)
_KEY, _VALUE, _LEASE = b"\x0a", b"\x12", b"\x18"  # PutRequest.key (1), value (2), lease (3)


def encode_txn(guards: list[Unchanged], ops: list[Op]) -> bytes:
    """TxnRequest{compare: [mod_revision(key) == n], success: [put | delete_range]}."""
    parts = []
    for g in guards:  # Compare{result=EQUAL(0), target=MOD(2), key, mod_revision}
        parts.append(_sized(_COMPARE, _MOD_EQUAL + _sized(_COMPARE_KEY, g.key.encode())
                            + _MOD_REVISION + _varint(g.mod_revision)))
    for op in ops:
        if isinstance(op, Put):
            body = _sized(_KEY, op.key.encode()) + _sized(_VALUE, op.value)
            if op.lease:
                body += _LEASE + _varint(op.lease)
            parts.append(_sized(_SUCCESS, _sized(_PUT, body)))
        else:
            parts.append(_sized(_SUCCESS, _sized(_DELETE, _sized(_KEY, op.key.encode()))))
    return b"".join(parts)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def decode_txn_response(buf: bytes) -> tuple[bool, int]:
    """(succeeded, header.revision) from a TxnResponse, skipping the per-op responses."""
    pos, succeeded, revision = 0, False, 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if number == 2:
                succeeded = bool(value)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if number == 1:  # ResponseHeader{cluster_id=1, member_id=2, revision=3, ...}
                hpos, end = pos, pos + length
                while hpos < end:
                    htag, hpos = _read_varint(buf, hpos)
                    hvalue, hpos = _read_varint(buf, hpos)
                    if htag >> 3 == 3:
                        revision = hvalue
            pos += length
        else:
            raise StoreError(f"unexpected wire type {wire} in TxnResponse")
    return succeeded, revision


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, value or start offset, end offset) for each field in buf[pos:end]."""
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 == 0:
            value, pos = _read_varint(buf, pos)
            yield tag >> 3, value, pos
        elif tag & 7 == 2:
            length, pos = _read_varint(buf, pos)
            yield tag >> 3, pos, pos + length
            pos += length
        else:
            raise StoreError(f"unexpected wire type {tag & 7} in RangeResponse")


def encode_range(
    key: bytes,
    range_end: bytes = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
) -> bytes:
    """RangeRequest{key=1, range_end=2, limit=3, revision=4, keys_only=8, count_only=9,
    min_mod_revision=10}; fields at their default are left out, as protobuf does."""
    out = _field(1, key)
    if range_end:
        out += _field(2, range_end)
    for number, value in ((3, limit), (4, revision), (8, int(keys_only)),
                          (9, int(count_only)), (10, min_mod_revision)):
        if value:
            out += _int_field(number, value)
    return out


def _kv(buf: bytes, pos: int, end: int) -> KeyValue:
    """KeyValue{key=1, create_revision=2, mod_revision=3, version=4, value=5, lease=6},
    read inline: a sync reads 10,000 inventory entries on every restart, and the
    generator of ``_fields`` cost twice as much per key."""
    key = value = b""
    create = mod = lease = 0
    while pos < end:
        tag = buf[pos]
        if tag & 0x80:  # a field number above 15: none today, but read it right
            tag, pos = _read_varint(buf, pos)
        else:
            pos += 1
        if tag & 7 == 2:  # key (0x0a) or value (0x2a)
            length = buf[pos]
            pos += 1
            if length & 0x80:
                length, pos = _read_varint(buf, pos - 1)
            if tag == 0x0A:
                key = buf[pos : pos + length]
            elif tag == 0x2A:
                value = buf[pos : pos + length]
            pos += length
        elif tag & 7 == 0:
            number = buf[pos]
            pos += 1
            if number & 0x80:
                number, pos = _read_varint(buf, pos - 1)
            if tag == 0x10:
                create = number
            elif tag == 0x18:
                mod = number
            elif tag == 0x30:
                lease = number
        else:
            raise StoreError(f"unexpected wire type {tag & 7} in KeyValue")
    return KeyValue(key.decode(), value, mod, create, lease)


def decode_range_response(buf: bytes) -> tuple[list[KeyValue], bool, int]:
    """(kvs, more, header.revision) from a RangeResponse: pure-Python protobuf took
    ~0.1 ms per key, which made reading 60,000 keys the slowest part of a reconcile."""
    kvs, more, revision = [], False, 0
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 == 0:
            value, pos = _read_varint(buf, pos)
            if tag >> 3 == 3:
                more = bool(value)
            continue
        if tag & 7 != 2:
            raise StoreError(f"unexpected wire type {tag & 7} in RangeResponse")
        length, pos = _read_varint(buf, pos)
        if tag >> 3 == 2:
            kvs.append(_kv(buf, pos, pos + length))
        elif tag >> 3 == 1:
            for n, x, _ in _fields(buf, pos, pos + length):
                if n == 3:
                    revision = x
        pos += length
    return kvs, more, revision


def decode_range_count(buf: bytes) -> tuple[int, int]:
    """(count, header.revision) from a RangeResponse{header=1, count=4}: the answer to a
    ``count_only`` request."""
    count = revision = 0
    for number, a, b in _fields(buf, 0, len(buf)):
        if number == 4:
            count = a
        elif number == 1:
            for n, x, _ in _fields(buf, a, b):
                if n == 3:
                    revision = x
    return count, revision


def encode_keepalive(lease_id: int) -> bytes:
    """LeaseKeepAliveRequest{ID=1}."""
    return _int_field(1, lease_id)


def decode_keepalive(buf: bytes) -> tuple[int, int]:
    """(lease id, TTL) from a LeaseKeepAliveResponse{header=1, ID=2, TTL=3}; TTL 0 (or
    below) means etcd no longer knows the lease."""
    lease_id = ttl = 0
    for number, value, _ in _fields(buf, 0, len(buf)):
        if number == 2:
            lease_id = _signed(value)
        elif number == 3:
            ttl = _signed(value)
    return lease_id, ttl


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
