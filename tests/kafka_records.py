"""Hand-built Kafka v2 record batches and raw produce requests, for tests
that must send what no client library would: wrong counts, malformed
varints, corrupt compressed payloads, decompression bombs."""

import struct

from conftest import frame, read_frame

# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as the batch CRC uses.
_CRC32C_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def varint(n):
    """Zigzag varint (signed), as Kafka's ByteUtils.writeVarint/writeVarlong."""
    z = (n << 1) ^ (n >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _bytes_field(b):
    return varint(-1) if b is None else varint(len(b)) + b


def record_body(offset_delta, timestamp_delta=0, key=None, value=b"", headers=(), attributes=0):
    body = bytes([attributes]) + varint(timestamp_delta) + varint(offset_delta)
    body += _bytes_field(key) + _bytes_field(value) + varint(len(headers))
    for hk, hv in headers:
        body += varint(len(hk)) + hk + _bytes_field(hv)
    return body


def record(offset_delta, **kw):
    body = record_body(offset_delta, **kw)
    return varint(len(body)) + body


def records(values, base=0):
    return b"".join(record(i, value=v) for i, v in enumerate(values, start=base))


CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = range(5)


def batch(payload, count, last_offset_delta=None, attributes=0, base_offset=0, base_timestamp=0,
          max_timestamp=None, producer_id=-1, producer_epoch=-1, base_sequence=-1, magic=2,
          fix_crc=True, crc=None):
    """A v2 batch around `payload` (the records, compressed or not). The CRC is
    computed over what follows it unless `fix_crc` is False."""
    if last_offset_delta is None:
        last_offset_delta = count - 1
    if max_timestamp is None:
        max_timestamp = base_timestamp
    after_crc = struct.pack(">hiqqqhii", attributes, last_offset_delta, base_timestamp,
                            max_timestamp, producer_id, producer_epoch, base_sequence,
                            count) + payload
    if fix_crc:
        crc = crc32c(after_crc)
    length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, length, -1, magic, crc or 0) + after_crc


def produce_request(topic, partition, record_set, version=3, acks=-1, correlation_id=1):
    """A Produce v3-v8 frame (non-flexible) for one partition."""
    t = topic.encode()
    body = struct.pack(">h", -1)  # null transactional id
    body += struct.pack(">hi", acks, 10000)
    body += struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
    body += struct.pack(">i", 1) + struct.pack(">i", partition)
    body += struct.pack(">i", len(record_set)) + record_set
    return frame(0, version, correlation_id, body)


def produce_error(sock, topic, partition, record_set, version=3):
    """Sends one produce and returns the partition's (error code, base offset)."""
    sock.sendall(produce_request(topic, partition, record_set, version=version))
    resp = read_frame(sock, timeout=30)
    at = 4 + 4  # correlation id, topic count
    name_len = struct.unpack(">h", resp[at:at + 2])[0]
    at += 2 + name_len + 4  # name, partition count
    index, error, base_offset = struct.unpack(">ihq", resp[at:at + 14])
    assert index == partition
    return error, base_offset
