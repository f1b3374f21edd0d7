"""
Tests for L{metamorphosis.protocol.records}: records as the Java broker
stores them, byte for byte, and round-trip properties.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.records import (
    HEADER_SIZE,
    InvalidRecord,
    Record,
    batchSize,
    checksum,
    decodePayload,
    decodeRecords,
    encodePayload,
    encodeRecord,
    encodeRecordParts,
)

EXAMPLE1 = bytes.fromhex("00000005" "3610a686" "b41bba610a400000" "00000000" "68656c6c6f")
EXAMPLE2 = bytes.fromhex(
    "0000000a" "39362501" "b41bba610a401005" "00000001" "00000004" "74616731" "6869"
)
EXAMPLE3 = bytes.fromhex("00000005" "18fc0e13" "031750fa8a400000" "00000001" "00000000" "78")

attributes = st.none() | st.text(max_size=20)
payloads = st.binary(max_size=300)
messages = st.tuples(
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), payloads, attributes
)


def record(msgId, data, attribute):
    body, flag = encodePayload(data, attribute)
    return encodeRecord(msgId, flag, body)


class WorkedExampleTests(SynchronousTestCase):
    """
    Records as the Java broker stores them, byte for byte.
    """

    def test_noAttribute(self):
        body, flag = encodePayload(b"hello", None)
        self.assertEqual((body, flag), (b"hello", 0))
        self.assertEqual(checksum(body), 907060870)
        self.assertEqual(encodeRecord(-5468572396564774912, flag, body), EXAMPLE1)

    def test_attribute(self):
        body, flag = encodePayload(b"hi", "tag1")
        self.assertEqual(body, bytes.fromhex("00000004746167316869"))
        self.assertEqual(flag, 1)
        self.assertEqual(checksum(body), 959849729)
        self.assertEqual(encodeRecord(-5468572396564770811, flag, body), EXAMPLE2)
        [record], consumed = decodeRecords(EXAMPLE2)
        self.assertEqual(consumed, 30)
        self.assertEqual((record.data, record.attribute), (b"hi", "tag1"))
        self.assertEqual(record.id, -5468572396564770811)

    def test_emptyAttribute(self):
        body, flag = encodePayload(b"x", "")
        self.assertEqual((body, flag), (b"\x00\x00\x00\x00x", 1))
        self.assertEqual(checksum(body), 419171859)
        self.assertEqual(encodeRecord(222735743569625088, flag, body), EXAMPLE3)
        [record], _ = decodeRecords(EXAMPLE3)
        self.assertEqual(record.attribute, "")
        self.assertIsNot(record.attribute, None)
        self.assertEqual(record.data, b"x")

    def test_masking(self):
        self.assertEqual(checksum(b"hi"), 1486039724)

    def test_partialTail(self):
        buffer = EXAMPLE1 + EXAMPLE2[:27]
        records, consumed = decodeRecords(buffer)
        self.assertEqual(consumed, 25)
        self.assertEqual([r.data for r in records], [b"hello"])

    def test_utf8AttributeLengthInBytes(self):
        body, flag = encodePayload(b"", "\u00e9")
        self.assertEqual(body, b"\x00\x00\x00\x02\xc3\xa9")
        self.assertEqual(decodePayload(body, flag), (b"", "\u00e9"))


class InvalidRecordTests(SynchronousTestCase):
    def test_badChecksum(self):
        corrupt = bytearray(EXAMPLE1)
        corrupt[-1] ^= 1
        self.assertRaises(InvalidRecord, decodeRecords, bytes(corrupt))
        records, consumed = decodeRecords(bytes(corrupt), verify=False)
        self.assertEqual(records[0].data, b"helln")

    def test_negativeLength(self):
        self.assertRaises(InvalidRecord, decodeRecords, b"\xff" * 20)

    def test_tooLong(self):
        self.assertRaises(InvalidRecord, decodeRecords, EXAMPLE1, maxBodySize=4)
        # A truncated record is left for later even when it is too long, as
        # the Java iterator checks truncation first.
        self.assertEqual(decodeRecords(EXAMPLE1[:24], maxBodySize=4), ([], 0))

    def test_badAttributeLength(self):
        self.assertRaises(InvalidRecord, decodePayload, b"\x00\x00\x00\x09ab", 1)
        self.assertRaises(InvalidRecord, decodePayload, b"\x00\x00", 1)


class MalformedInputTests(SynchronousTestCase):
    def test_malformedAttributeReplaced(self):
        """
        Bytes that are not UTF-8 in an attribute decode with replacement
        characters, as Java's C{new String(bytes, "UTF-8")} does.
        """
        self.assertEqual(decodePayload(b"\x00\x00\x00\x02\xff\xfeok", 1), (b"ok", "\ufffd\ufffd"))

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=200), st.booleans())
    def test_anyBytes(self, data, verify):
        """
        Arbitrary bytes decode to complete records or raise L{InvalidRecord};
        nothing else escapes, and every decoded record can be split.
        """
        try:
            records, consumed = decodeRecords(data, verify=verify)
        except InvalidRecord:
            return
        self.assertLessEqual(consumed, len(data))
        self.assertEqual(sum(r.size for r in records), consumed)
        for r in records:
            try:
                data, attribute = decodePayload(r.body, r.flag)
            except InvalidRecord:
                continue
            self.assertLessEqual(len(data), len(r.body))


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.tuples(st.integers(min_value=0, max_value=(1 << 63) - 1),
                              st.integers(min_value=0, max_value=(1 << 31) - 1), payloads)))
    def test_batchSize(self, batch):
        """
        C{batchSize} is the length of the records encoded one after another.
        """
        self.assertEqual(batchSize(batch),
                         len(b"".join(encodeRecord(*message) for message in batch)))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(messages, max_size=8))
    def test_roundTrip(self, items):
        buffer = b"".join(record(*item) for item in items)
        records, consumed = decodeRecords(buffer)
        self.assertEqual(consumed, len(buffer))
        self.assertEqual(
            [(r.id, r.data, r.attribute) for r in records], [tuple(i) for i in items]
        )
        self.assertEqual(sum(r.size for r in records), len(buffer))

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.tuples(messages, st.integers(0, 0x7FFFFFFF)), max_size=6))
    def test_partsAreRecords(self, items):
        """
        L{encodeRecordParts} joins to the same bytes as L{encodeRecord}.
        """
        triples = [
            (msgId, flag, encodePayload(data, attribute)[0])
            for (msgId, data, attribute), flag in items
        ]
        parts = [b"head"]
        encodeRecordParts(triples, parts)
        self.assertEqual(
            b"".join(parts), b"head" + b"".join(encodeRecord(*t) for t in triples)
        )

    @settings(max_examples=60, deadline=None)
    @given(st.lists(messages, min_size=1, max_size=6), st.data())
    def test_partialTail(self, items, data):
        """
        Any prefix of a record stream decodes to the records wholly inside
        it, and C{consumed} is the end of the last of them.
        """
        encoded = [record(*item) for item in items]
        buffer = b"".join(encoded)
        cut = data.draw(st.integers(min_value=0, max_value=len(buffer)))
        records, consumed = decodeRecords(buffer[:cut])
        ends = [sum(map(len, encoded[: i + 1])) for i in range(len(encoded))]
        whole = [end for end in ends if end <= cut]
        self.assertEqual(len(records), len(whole))
        self.assertEqual(consumed, whole[-1] if whole else 0)
        self.assertEqual([r.encode() for r in records], encoded[: len(whole)])

    @settings(max_examples=40, deadline=None)
    @given(payloads, attributes, st.integers(min_value=0, max_value=0x7FFFFFFF))
    def test_flagBitsCarried(self, data, attribute, extra):
        body, flag = encodePayload(data, attribute)
        flag |= extra & ~1
        record = Record(7, flag, body)
        self.assertEqual(len(record.encode()), HEADER_SIZE + len(body))
        [decoded], _ = decodeRecords(record.encode())
        self.assertEqual(decoded, record)
        self.assertEqual((decoded.data, decoded.attribute), (data, attribute))
