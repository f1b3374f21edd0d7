"""
Tests for L{metamorphosis.broker.store.recovery}: torn and corrupt tails,
foreign files, gaps between segments.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.store import verify
from metamorphosis.broker.store.errors import DamagedRecords
from metamorphosis.broker.store.recovery import loadPartition
from metamorphosis.protocol.records import decodeRecords

from .helpers import makeStore, readPartition, record

RECORDS = [record(i, b"payload-%d" % (i,) * (i + 1)) for i in range(6)]


def messages(findings):
    return [formatEvent({"log_format": f.format, **f.fields}) for f in findings]


class TailTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "00000000000000000000.meta")
        self.good = b"".join(RECORDS)

    def write(self, data, name="00000000000000000000.meta"):
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)

    def assertCut(self, validEnd):
        """
        A torn last record is cut and appending continues right after the
        last valid record.
        """
        recovered = loadPartition(self.directory)
        [segment] = recovered.segments
        self.assertEqual((segment.written, os.path.getsize(self.path)), (validEnd, validEnd))
        self.assertEqual(recovered.damaged, [])
        [message] = messages(recovered.findings)
        self.assertIn("incomplete last record", message)
        self.assertIn(self.path, message)
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.append(99, 0, b"next")), validEnd)
        names, data = readPartition(self.directory)
        self.assertEqual(data, self.good[:validEnd] + record(99, b"next"))

    def assertKept(self, data, damaged, reasonWord):
        """
        Damaged bytes stay in place and are never served, every valid record
        is, and appending continues after the end of the file: no offset
        that may have been acknowledged is handed out again.
        """
        self.write(data)
        recovered = loadPartition(self.directory)
        [segment] = recovered.segments
        self.assertEqual((segment.written, os.path.getsize(self.path)), (len(data), len(data)))
        self.assertEqual([(start, end) for start, end, _ in recovered.damaged], damaged)
        found = messages(recovered.findings)
        self.assertEqual(len(found), len(damaged))
        self.assertIn(reasonWord, found[0])
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.append(99, 0, b"next")), len(data))
        served = readAll(self, store)
        kept = [(offset, r.id) for offset, r in served]
        expected = []
        offset = 0
        for r in RECORDS:
            if not any(start <= offset < end for start, end in damaged):
                expected.append((offset, decodeRecords(r)[0][0].id))
            offset += len(r)
        self.assertEqual(kept, expected + [(len(data), 99)])
        return recovered

    def test_clean(self):
        self.write(self.good)
        recovered = loadPartition(self.directory)
        self.assertEqual(recovered.findings, [])
        self.assertEqual(recovered.messageCount, 6)
        self.assertEqual(recovered.segments[0].written, len(self.good))

    def test_truncatedLastRecord(self):
        for cut in (1, 10, len(RECORDS[-1]) - 20, len(RECORDS[-1]) - 4):
            self.write(self.good[:-cut])
            self.assertCut(len(self.good) - len(RECORDS[-1]))
            self.write(self.good)

    def test_truncatedToZeroBytes(self):
        """
        A last record cut short to bytes that are all zero (here the first
        byte of its length) cannot be told from the zeros a store writes
        ahead of its records: appending continues over them.
        """
        validEnd = len(self.good) - len(RECORDS[-1])
        self.write(self.good[: validEnd + 1])
        recovered = loadPartition(self.directory)
        self.assertEqual((recovered.segments[0].written, recovered.findings), (validEnd, []))
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.append(99, 0, b"next")), validEnd)
        self.assertEqual(readPartition(self.directory)[1], self.good[:validEnd] + record(99, b"next"))

    def test_shortGarbageAppended(self):
        self.write(self.good + b"junk")
        self.assertCut(len(self.good))

    def test_garbageAppended(self):
        """
        Whole-looking bytes that fail their checksum at the end are kept
        as a damaged range, not cut: they may be an acknowledged record.
        """
        garbage = b"\x00\x00\x00\x03garbage-garbage-garbage"
        self.assertKept(self.good + garbage, [(len(self.good), len(self.good) + len(garbage))],
                        "checksum")

    def test_negativeLength(self):
        self.assertKept(self.good + b"\xff" * 30,
                        [(len(self.good), len(self.good) + 30)], "negative")

    def test_flippedByteInTheMiddle(self):
        """
        A damaged record in the middle of the last segment: the records
        after it are still served, at their offsets (Java cut them all and
        handed their offsets out again).
        """
        data = bytearray(self.good)
        middle = sum(map(len, RECORDS[:3]))
        data[middle + 25] ^= 0x40
        recovered = self.assertKept(bytes(data), [(middle, middle + len(RECORDS[3]))],
                                    "checksum")
        self.assertEqual(recovered.messageCount, 5)

    def test_damagedLengthOfTheLastRecord(self):
        """
        The last record with a damaged length field looks torn, but its
        checksum matches the rest of the file: it was written whole, so it
        is kept as damage rather than cut.
        """
        data = bytearray(self.good)
        last = len(self.good) - len(RECORDS[-1])
        data[last + 2] ^= 0x10
        self.assertKept(bytes(data), [(last, len(data))], "incomplete")

    def test_zeroFilled(self):
        """
        Zeroed bytes (a block lost in a crash) are damage, not empty
        records, and the records after them are kept.
        """
        data = bytearray(self.good)
        start = len(RECORDS[0])
        end = start + len(RECORDS[1]) + len(RECORDS[2])
        data[start:end] = bytes(end - start)
        self.assertKept(bytes(data), [(start, end)], "zero")

    def test_preallocatedTail(self):
        """
        Zeros after the last record are the tail a store writes ahead of
        its records (left by a kill): not damage, and appending continues
        over them, right after the last record.
        """
        self.write(self.good + bytes(5000))
        recovered = loadPartition(self.directory)
        [segment] = recovered.segments
        self.assertEqual((segment.written, recovered.messageCount), (len(self.good), 6))
        self.assertEqual((recovered.findings, recovered.damaged), ([], []))
        self.assertEqual(os.path.getsize(self.path), len(self.good) + 5000)
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.append(99, 0, b"next")), len(self.good))
        self.assertEqual(readPartition(self.directory)[1], self.good + record(99, b"next"))
        self.successResultOf(store.close())
        self.assertEqual(os.path.getsize(self.path), len(self.good) + len(record(99, b"next")))

    def test_onlyZeros(self):
        """
        A new segment whose zeros were written before its first record.
        """
        self.write(bytes(4096))
        recovered = loadPartition(self.directory)
        self.assertEqual((recovered.segments[0].written, recovered.findings), (0, []))

    def test_tornIntoTail(self):
        """
        A record being written into the tail when the broker was killed:
        its first sectors reached the disk, the zeros after them stayed.
        It was never acknowledged, and is cut.
        """
        torn = record(99, b"n" * 3000)[:1024]
        self.write(self.good + torn + bytes(4096))
        self.assertCut(len(self.good))

    def test_damageBeforeTail(self):
        """
        A whole record that fails its checksum, then the tail: the record is
        damage (it may have been acknowledged) and appending continues
        after it, over the zeros.
        """
        bad = bytearray(record(99, b"n" * 300))
        bad[100] ^= 1
        self.write(self.good + bytes(bad) + bytes(4096))
        recovered = loadPartition(self.directory)
        end = len(self.good) + len(bad)
        self.assertEqual([(start, stop) for start, stop, _ in recovered.damaged],
                         [(len(self.good), end)])
        self.assertEqual(recovered.segments[0].written, end)
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.append(98, 0, b"next")), end)

    def test_scanAcrossChunks(self):
        """
        The scan reads in chunks; records straddling chunk ends are fine.
        """
        self.patch(verify, "SCAN_CHUNK", 7)
        data = bytearray(self.good)
        data[len(RECORDS[0]) + 22] ^= 1
        self.write(bytes(data))
        with open(self.path, "rb") as f:
            result = verify.scanRecords(f.fileno(), len(data))
        self.assertEqual(
            (result.count, [(d.start, d.end) for d in result.damaged], result.tornAt),
            (5, [(len(RECORDS[0]), len(RECORDS[0]) + len(RECORDS[1]))], None),
        )


def readAll(testCase, store):
    """
    Every record a consumer of C{store} is served, following the moves
    past damaged ranges, as C{[(offset, record)]}.
    """
    served = []
    offset = store.minOffset
    while offset < store.maxOffset:
        try:
            messageSlice = store.slice(offset, 1 << 20)
        except DamagedRecords as e:
            testCase.assertEqual(store.nearestOffset(offset), e.nextOffset)
            offset = e.nextOffset
            continue
        records, consumed = messageSlice.records()
        testCase.assertTrue(consumed)
        for r in records:
            served.append((offset, r))
            offset += r.size
    return served


class ScanPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=8),
        st.data(),
        st.integers(min_value=1, max_value=64),
    )
    def test_oneDamagedRecord(self, payloads, data, chunk):
        """
        One byte of one record changed (outside the id and flag, which no
        checksum covers): exactly that record is reported damaged, every
        other one is found at its place, whatever the read size.
        """
        self.patch(verify, "SCAN_CHUNK", chunk)
        records = [record(i + 1, p) for i, p in enumerate(payloads)]
        starts = [sum(map(len, records[:i])) for i in range(len(records))]
        victim = data.draw(st.integers(0, len(records) - 1))
        where = data.draw(st.sampled_from(
            list(range(8)) + list(range(20, len(records[victim])))))
        flip = data.draw(st.integers(1, 255))
        content = bytearray(b"".join(records))
        content[starts[victim] + where] ^= flip
        result = scan(self, bytes(content))
        end = starts[victim] + len(records[victim])
        self.assertEqual([(d.start, d.end) for d in result.damaged], [(starts[victim], end)])
        self.assertEqual((result.count, result.tornAt), (len(records) - 1, None))

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.binary(max_size=100), max_size=8),
        st.binary(max_size=80),
        st.integers(min_value=1, max_value=64),
    )
    def test_validPrefixKept(self, payloads, tail, chunk):
        """
        Whatever follows a run of good records, the scan keeps all of them,
        and the damaged ranges and torn tail cover the rest exactly.
        """
        self.patch(verify, "SCAN_CHUNK", chunk)
        good = b"".join(record(i + 1, p) for i, p in enumerate(payloads))
        content = good + tail
        result = scan(self, content)
        self.assertGreaterEqual(result.count, len(payloads))
        covered = sorted([(d.start, d.end) for d in result.damaged]
                         + ([(result.tornAt, len(content))] if result.tornAt is not None else []))
        for start, end in covered:
            self.assertGreaterEqual(start, len(good))
        # Between the damage, the bytes decode as whole records.
        position = len(good)
        for start, end in covered + [(len(content), len(content))]:
            records, consumed = decodeRecords(content[position:start])
            self.assertEqual(consumed, start - position)
            position = end


    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.binary(max_size=100), max_size=8),
        st.binary(max_size=200),
        st.data(),
        st.integers(min_value=0, max_value=3000),
        st.integers(min_value=1, max_value=64),
    )
    def test_tornWriteIntoTail(self, payloads, payload, data, zeros, chunk):
        """
        Records, then a prefix of one more (a write cut short), then zeros:
        a scan of the last segment keeps every record, reports no damage,
        and appending continues after the last whole record, whatever the
        prefix and however many zeros.
        """
        self.patch(verify, "SCAN_CHUNK", chunk)
        good = b"".join(record(i + 1, p) for i, p in enumerate(payloads))
        extra = record(len(payloads) + 1, payload)
        prefix = extra[: data.draw(st.integers(0, len(extra)))]
        content = good + prefix + bytes(zeros)
        # Zeros complete the record when its missing bytes were zeros (no
        # checksum covers the id and the flag: lost bytes of those are
        # not seen), unless that leaves a header of zeros.
        written = content[len(good) : len(good) + len(extra)]
        whole = (len(written) == len(extra) and written[:8] == extra[:8]
                 and written[20:] == extra[20:] and any(written[:20]))
        result = scan(self, content, last=True)
        self.assertEqual(result.damaged, [])
        self.assertEqual((result.count, result.validEnd),
                         (len(payloads) + whole, len(good) + whole * len(extra)))

def scan(testCase, content, last=False):
    path = testCase.mktemp()
    with open(path, "wb") as f:
        f.write(content)
    with open(path, "rb") as f:
        return verify.scanRecords(f.fileno(), len(content), last=last)


class DirectoryTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, name, data):
        with open(os.path.join(self.directory, name), "wb") as f:
            f.write(data)

    def test_empty(self):
        recovered = loadPartition(self.directory)
        self.assertEqual([s.start for s in recovered.segments], [0])
        self.assertEqual(os.listdir(self.directory), ["00000000000000000000.meta"])

    def test_foreignFiles(self):
        data = b"".join(RECORDS[:2])
        self.write("00000000000000000000.meta", data)
        self.write("notes.txt", b"hello")
        self.write("x.meta", b"")
        self.write("00000000000000000000.meta.arc", b"old")
        os.mkdir(os.path.join(self.directory, "sub"))
        recovered = loadPartition(self.directory)
        self.assertEqual(recovered.segments[0].written, len(data))
        found = messages(recovered.findings)
        self.assertEqual(len(found), 3)
        for name in ("notes.txt", "x.meta", "sub"):
            self.assertTrue(any(repr(name) in m for m in found), (name, found))

    def test_earlierSegmentsNotScanned(self):
        first = b"".join(RECORDS[:2])
        damaged = bytearray(first)
        damaged[30] ^= 1
        self.write("00000000000000000000.meta", bytes(damaged))
        self.write("%020d.meta" % (len(first),), RECORDS[2])
        recovered = loadPartition(self.directory)
        self.assertEqual(recovered.findings, [])
        self.assertEqual([s.written for s in recovered.segments], [len(first), len(RECORDS[2])])

    def test_gap(self):
        """
        Segments that do not join up: the newest contiguous run is served,
        older files are left alone and reported.
        """
        self.write("00000000000000000000.meta", RECORDS[0])
        self.write("%020d.meta" % (1000,), RECORDS[1])
        self.write("%020d.meta" % (1000 + len(RECORDS[1]),), RECORDS[2])
        recovered = loadPartition(self.directory)
        self.assertEqual([s.start for s in recovered.segments], [1000, 1000 + len(RECORDS[1])])
        [message] = messages(recovered.findings)
        self.assertIn("not contiguous", message)
        self.assertIn("00000000000000000000.meta", message)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "00000000000000000000.meta")))
        store = makeStore(self.directory, recover=True)
        self.assertEqual(store.minOffset, 1000)
        self.assertEqual(store.maxOffset, 1000 + len(RECORDS[1]) + len(RECORDS[2]))
