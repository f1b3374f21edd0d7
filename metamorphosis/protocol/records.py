"""
Message records: the layout MetaQ stores on disk and sends in C{value}
responses (docs/storage.md).

A record is a 20-byte header (body length, masked CRC32 of the body, message
id, flag) followed by the body.  The body is the put command's body unchanged;
when flag bit 0 is set it starts with a length-prefixed UTF-8 attribute.
Records are packed back to back, so a buffer of them may end in a partial
record, which L{decodeRecords} leaves for the next read just as the Java
C{MessageIterator} does.
"""

import struct
import zlib
from dataclasses import dataclass

HEADER_SIZE = 20

_header = struct.Struct(">iiqi")
_attributeLength = struct.Struct(">i")

ATTRIBUTE_FLAG = 1


class InvalidRecord(Exception):
    """
    A record whose checksum does not match its body, or whose length field
    cannot be a record length.
    """


def checksum(body):
    """
    The checksum MetaQ stores and sends: CRC32 masked to a non-negative
    Java int (C{CheckSum.crc32}).
    """
    return zlib.crc32(body) & 0x7FFFFFFF


def encodePayload(data, attribute):
    """
    Build a put body and its flag from a payload and an optional attribute.

    L{None} and C{""} differ: only L{None} leaves the body as the bare
    payload with flag 0; C{""} gives a zero attribute length and flag 1.

    @return: C{(body, flag)}
    """
    if attribute is None:
        return bytes(data), 0
    encoded = attribute.encode("utf-8")
    return _attributeLength.pack(len(encoded)) + encoded + data, ATTRIBUTE_FLAG


def decodePayload(body, flag):
    """
    Split a body into payload and attribute according to flag bit 0.

    @return: C{(data, attribute)}, attribute L{None} when bit 0 is clear.
    @raise InvalidRecord: the attribute length does not fit the body.
    """
    if not flag & ATTRIBUTE_FLAG:
        return bytes(body), None
    if len(body) < 4:
        raise InvalidRecord("Attribute flag set but body has %d bytes" % (len(body),))
    (length,) = _attributeLength.unpack_from(body)
    if length < 0 or 4 + length > len(body):
        raise InvalidRecord("Invalid attribute length %d" % (length,))
    # Java's new String(bytes, "UTF-8") replaces malformed sequences.
    attribute = bytes(body[4 : 4 + length]).decode("utf-8", errors="replace")
    return bytes(body[4 + length :]), attribute


def encodeHeader(msgId, flag, body, bodyChecksum=None):
    """
    The 20-byte header of the record holding C{body}; C{bodyChecksum} is
    its L{checksum} when already known (a put's, verified by the broker).
    """
    if bodyChecksum is None:
        bodyChecksum = zlib.crc32(body) & 0x7FFFFFFF
    return _header.pack(len(body), bodyChecksum, msgId, flag)


def encodeRecordParts(messages, parts):
    """
    Append to the list C{parts} the header and the body of the record of
    each C{(msgId, flag, body)} in C{messages}: the batch form of
    L{encodeRecord}, for a writer that joins many records into one write.
    """
    add = parts.append
    pack = _header.pack
    crc32 = zlib.crc32
    for msgId, flag, body in messages:
        add(pack(len(body), crc32(body) & 0x7FFFFFFF, msgId, flag))
        add(body)


def batchSize(messages):
    """
    The bytes the records of C{(msgId, flag, body)} tuples take, headers
    included.
    """
    return sum(HEADER_SIZE + len(body) for _, _, body in messages)


def encodeRecord(msgId, flag, body):
    """
    The complete stored record (header and body) for one message.
    """
    return encodeHeader(msgId, flag, body) + body


def decodeHeader(buffer, position=0):
    """
    Read a record header.

    @return: C{(length, checksum, id, flag)}
    """
    return _header.unpack_from(buffer, position)


@dataclass(frozen=True, slots=True)
class Record:
    """
    One decoded record.  C{body} is the stored body; C{data} and
    C{attribute} split it as the consumer sees the message.
    """

    id: int
    flag: int
    body: bytes

    @property
    def data(self):
        return decodePayload(self.body, self.flag)[0]

    @property
    def attribute(self):
        return decodePayload(self.body, self.flag)[1]

    @property
    def size(self):
        return HEADER_SIZE + len(self.body)

    def encode(self):
        return encodeRecord(self.id, self.flag, self.body)


def decodeRecords(buffer, verify=True, maxBodySize=None):
    """
    Decode the complete records at the start of C{buffer}.

    A truncated final record is not an error: it is left undecoded and
    C{consumed} stops at its first byte, so the next read can start there.

    @param verify: check each record's CRC32.
    @param maxBodySize: reject records with a longer body, as the Java
        decoder does with C{notify.remoting.max_read_buffer_size}.

    @return: C{(records, consumed)}
    @raise InvalidRecord: a checksum mismatch (when C{verify}), a negative
        length, or a complete record with a body longer than C{maxBodySize}
        (checked in the Java order: truncation, then CRC, then length).  Records before the bad
        one are lost with the exception; use L{iterRecords} to keep them.
    """
    records = []
    consumed = 0
    for record, end in iterRecords(buffer, verify, maxBodySize):
        records.append(record)
        consumed = end
    return records, consumed


def iterRecords(buffer, verify=True, maxBodySize=None):
    """
    Yield C{(record, endPosition)} for each complete record of C{buffer},
    stopping silently at a partial tail and raising L{InvalidRecord} at a bad
    record (after yielding the good ones before it).
    """
    view = memoryview(buffer)
    total = len(view)
    position = 0
    while total - position >= HEADER_SIZE:
        length, crc, msgId, flag = _header.unpack_from(view, position)
        if length < 0:
            raise InvalidRecord("Invalid record length %d at %d" % (length, position))
        end = position + HEADER_SIZE + length
        if end > total:
            return
        body = bytes(view[position + HEADER_SIZE : end])
        if verify and checksum(body) != crc:
            raise InvalidRecord("Invalid message at %d" % (position,))
        if maxBodySize is not None and length > maxBodySize:
            raise InvalidRecord("Too much long payload length:%d" % (length,))
        yield Record(msgId, flag, body), end
        position = end
