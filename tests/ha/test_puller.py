"""
Tests for L{metamorphosis.ha.metaslave.PartitionPuller}: the async slave's
fetch loop for one partition, against a master the test answers by hand and
a L{Clock}.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.store.errors import OffsetMismatch
from metamorphosis.ha.config import AsyncSlaveConfig
from metamorphosis.ha.link import NotConnected
from metamorphosis.ha.metaslave import MAX_SIZE, PartitionPuller, replaceTopicSections
from metamorphosis.protocol.commands import GetCommand, OffsetCommand, ResultCommand, ValueCommand
from metamorphosis.protocol.records import encodeRecord


class FakeStore:
    def __init__(self, minOffset=0):
        self.minOffset = minOffset
        self.sizeInBytes = 0
        self.appended = []
        self.mismatch = False

    def appendRecords(self, buffer, expectedOffset=None):
        if self.mismatch:
            return defer.fail(OffsetMismatch(expectedOffset, self.minOffset + self.sizeInBytes))
        self.appended.append((bytes(buffer), expectedOffset))
        self.sizeInBytes += len(buffer)
        return defer.succeed(expectedOffset)


class FakeSlave:
    """
    What a puller needs of L{AsyncSlaveService}: the master's answers are
    given by the test.
    """

    def __init__(self):
        self.reactor = Clock()
        self.config = AsyncSlaveConfig(0, "meta-slave-group", slaveMaxDelayInMills=1000)
        self.requests = []
        self.storedBatches = []

    def request(self, makeCommand):
        command = makeCommand(len(self.requests))
        d = defer.Deferred()
        self.requests.append((command, d))
        return d

    def stored(self, topic, partition, messages, size):
        self.storedBatches.append((topic, partition, messages, size))

    def answer(self, reply):
        command, d = self.requests[-1]
        d.callback(reply(command.opaque))


RECORDS = encodeRecord(-5, 0, b"one") + encodeRecord(-4, 1, b"\x00\x00\x00\x03atttwo")


class PartitionPullerTests(SynchronousTestCase):
    def setUp(self):
        self.slave = FakeSlave()
        self.store = FakeStore(minOffset=100)
        self.puller = PartitionPuller(self.slave, "meta-test", 0, self.store)
        self.puller.start()

    def lastGet(self):
        return self.slave.requests[-1][0]

    def test_appendsFetchedRecordsAtTheirOffset(self):
        """
        The first fetch is at the local end; complete records are appended
        unchanged where they were fetched from, a truncated tail is fetched
        again.
        """
        self.assertEqual(self.lastGet(), GetCommand("meta-test", "meta-slave-group", 0, 100, MAX_SIZE, 0))
        self.slave.answer(lambda opaque: ValueCommand(RECORDS + RECORDS[:10], opaque))
        self.assertEqual(self.store.appended, [(RECORDS, 100)])
        self.assertEqual(self.slave.storedBatches, [("meta-test", 0, 2, len(RECORDS))])
        self.assertEqual(self.lastGet().offset, 100 + len(RECORDS))
        self.assertEqual(self.puller.offset, 100 + len(RECORDS))

    def test_backOff(self):
        """
        Nothing new: the pause grows by a tenth of C{slaveMaxDelayInMills}
        per empty fetch, up to it; data resets it.
        """
        clock = self.slave.reactor
        waits = []
        for _ in range(12):
            self.slave.answer(lambda opaque: ResultCommand(404, b"Could not find message at position 100", opaque))
            [call] = clock.getDelayedCalls()
            waits.append(round(call.getTime() - clock.seconds(), 6))
            clock.advance(call.getTime() - clock.seconds())
        self.assertEqual(waits, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0])
        self.slave.answer(lambda opaque: ValueCommand(RECORDS, opaque))
        self.assertEqual(len(self.slave.requests), 14)

    def test_movedStaysPut(self):
        """
        A 301 (the master deleted what the slave still needs) is not
        followed: the logs would diverge.
        """
        self.slave.answer(lambda opaque: ResultCommand(301, b"5000", opaque))
        self.slave.reactor.advance(1.0)
        self.assertEqual(self.lastGet().offset, 100)
        self.assertEqual(self.store.appended, [])

    def test_recordLargerThanAFetch(self):
        self.slave.answer(lambda opaque: ValueCommand(RECORDS[:15], opaque))
        self.assertEqual(self.store.appended, [])
        self.slave.reactor.advance(1.0)
        self.assertEqual(self.lastGet().offset, 100)

    def test_corruptRecord(self):
        corrupt = bytearray(RECORDS)
        corrupt[45] ^= 0xFF  # the second record's body
        self.slave.answer(lambda opaque: ValueCommand(bytes(corrupt), opaque))
        self.assertEqual(self.store.appended, [])

    def test_offsetMismatch(self):
        """
        When the local log does not end where the puller thought, it
        continues from the local end.
        """
        self.store.mismatch = True
        self.store.sizeInBytes = 7
        self.slave.answer(lambda opaque: ValueCommand(RECORDS, opaque))
        self.slave.reactor.advance(1.0)
        self.assertEqual(self.lastGet().offset, 107)

    def test_noMaster(self):
        """
        Without a master the puller waits C{slaveMaxDelayInMills} between
        attempts.
        """
        self.slave.requests[-1][1].errback(NotConnected())
        self.slave.reactor.advance(0.9)
        self.assertEqual(len(self.slave.requests), 1)
        self.slave.reactor.advance(0.1)
        self.assertEqual(len(self.slave.requests), 2)

    def test_lag(self):
        d = defer.ensureDeferred(self.puller.refreshMasterOffset())
        self.assertEqual(self.slave.requests[-1][0], OffsetCommand("meta-test", "meta-slave-group", 0, 2**63 - 1, 1))
        self.slave.answer(lambda opaque: ResultCommand(200, b"1100", opaque))
        self.successResultOf(d)
        self.assertEqual(self.puller.lag, 1000)

    def test_stop(self):
        self.slave.answer(lambda opaque: ResultCommand(404, b"", opaque))
        stopped = self.puller.stop()
        self.successResultOf(stopped)
        self.slave.reactor.advance(10)
        self.assertEqual(len(self.slave.requests), 1)


class ReplaceTopicSectionsTests(SynchronousTestCase):
    """
    L{replaceTopicSections}: C{autoSyncMasterConfig} takes the master's
    topics and keeps the slave's own sections.
    """

    SLAVE = "; slave\n[system]\nbrokerId=2\nserverPort=8134\n[zookeeper]\nzk.zkConnect=h:1\n[topic=a]\nnumPartitions=1\n"
    MASTER = b"[system]\nbrokerId=2\nserverPort=8133\n[topic=a]\nnumPartitions=1\n[topic=b]\nnumPartitions=3\n"

    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(self.SLAVE)

    def test_takesMasterTopics(self):
        self.assertTrue(replaceTopicSections(self.path, self.MASTER))
        with open(self.path) as f:
            self.assertEqual(
                f.read(),
                "; slave\n[system]\nbrokerId=2\nserverPort=8134\n[zookeeper]\nzk.zkConnect=h:1\n"
                "[topic=a]\nnumPartitions=1\n[topic=b]\nnumPartitions=3\n",
            )

    def test_unchanged(self):
        self.assertFalse(replaceTopicSections(self.path, b"[system]\nserverPort=1\n[topic=a]\nnumPartitions=1\n"))
        with open(self.path) as f:
            self.assertEqual(f.read(), self.SLAVE)
