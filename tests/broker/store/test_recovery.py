"""
Tests for L{metamorphosis.broker.store.recovery}: torn and corrupt tails,
foreign files, gaps between segments.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.store.recovery import loadPartition, scanSegment
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

    def assertRecovered(self, validEnd, reasonWord, corruptCopy=None):
        recovered = loadPartition(self.directory)
        [segment] = recovered.segments
        self.assertEqual(segment.written, validEnd)
        self.assertEqual(os.path.getsize(self.path), validEnd)
        with open(self.path, "rb") as f:
            data = f.read()
        records, consumed = decodeRecords(data)
        self.assertEqual(consumed, validEnd)
        self.assertEqual(recovered.messageCount, len(records))
        [message] = messages(recovered.findings)
        self.assertIn(reasonWord, message)
        self.assertIn(self.path, message)
        copies = [n for n in os.listdir(self.directory) if n.endswith(".corrupt")]
        if corruptCopy is None:
            self.assertEqual(copies, [])
        else:
            self.assertEqual(copies, ["00000000000000000000.meta.%d.corrupt" % (validEnd,)])
            with open(os.path.join(self.directory, copies[0]), "rb") as f:
                self.assertEqual(f.read(), corruptCopy)
        # Appending continues right after the last valid record.
        store = makeStore(self.directory, recover=True, unflushThreshold=0)
        self.assertEqual(store.maxOffset, validEnd)
        self.assertEqual(self.successResultOf(store.append(99, 0, b"next")), validEnd)
        names, data = readPartition(self.directory)
        self.assertEqual(data, self.good[:validEnd] + record(99, b"next"))
        return recovered

    def test_clean(self):
        self.write(self.good)
        recovered = loadPartition(self.directory)
        self.assertEqual(recovered.findings, [])
        self.assertEqual(recovered.messageCount, 6)
        self.assertEqual(recovered.segments[0].written, len(self.good))

    def test_truncatedLastRecord(self):
        for cut in (1, 10, len(RECORDS[-1]) - 20, len(RECORDS[-1]) - 1):
            self.write(self.good[:-cut])
            self.assertRecovered(len(self.good) - len(RECORDS[-1]), "incomplete")
            self.write(self.good)

    def test_garbageAppended(self):
        self.write(self.good + b"\x00\x00\x00\x03garbage-garbage-garbage")
        self.assertRecovered(
            len(self.good), "checksum", corruptCopy=b"\x00\x00\x00\x03garbage-garbage-garbage"
        )

    def test_shortGarbageAppended(self):
        self.write(self.good + b"junk")
        self.assertRecovered(len(self.good), "incomplete")

    def test_negativeLength(self):
        self.write(self.good + b"\xff" * 30)
        self.assertRecovered(len(self.good), "negative", corruptCopy=b"\xff" * 30)

    def test_flippedByteInTheMiddle(self):
        """
        A damaged record in the middle of the last segment ends the valid
        log there, as in Java; what follows is cut but kept in a side file
        and the log line says how much.
        """
        data = bytearray(self.good)
        middle = sum(map(len, RECORDS[:3]))
        data[middle + 25] ^= 0x40
        self.write(bytes(data))
        recovered = self.assertRecovered(middle, "checksum", corruptCopy=bytes(data[middle:]))
        self.assertIn("after 3 valid record(s)", messages(recovered.findings)[0])

    def test_scanAcrossChunks(self):
        """
        The scan reads in chunks; records straddling chunk ends are fine.
        """
        from metamorphosis.broker.store import recovery

        self.patch(recovery, "SCAN_CHUNK", 7)
        self.write(self.good)
        with open(self.path, "rb") as f:
            result = scanSegment(f.fileno(), len(self.good))
        self.assertEqual((result.validEnd, result.count, result.reason), (len(self.good), 6, None))


class ScanPropertyTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.binary(max_size=100), max_size=8),
        st.binary(max_size=80),
        st.integers(min_value=1, max_value=64),
    )
    def test_validPrefixKept(self, payloads, tail, chunk):
        """
        Whatever follows a run of good records, the scan keeps all of them,
        and what it keeps decodes as records to the last byte.
        """
        from metamorphosis.broker.store import recovery

        self.patch(recovery, "SCAN_CHUNK", chunk)
        good = b"".join(record(i, p) for i, p in enumerate(payloads))
        data = good + tail
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            result = scanSegment(f.fileno(), len(data))
        self.assertGreaterEqual(result.validEnd, len(good))
        self.assertLessEqual(result.validEnd, len(data))
        records, consumed = decodeRecords(data[: result.validEnd])
        self.assertEqual(consumed, result.validEnd)
        self.assertEqual(len(records), result.count)
        self.assertEqual(result.reason is None, result.validEnd == len(data))


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
