"""
Damaged and full disks under a real broker process (docs/disk-faults.md):
the broker refuses what it cannot keep and never hands out an
acknowledged offset again.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.broker.client import connect
from tests.integration.brokerprocess import startBroker
from tests.waiting import waitFor

TOPIC = "disk"
QUALIFIER = "diskq"

SERVER_INI = """\
[system]
brokerId=0
numPartitions=2
dataPath=data
unflushThreshold=0
flushTxLogAtCommit=1
[zookeeper]
zk.zkEnable=false
[topic=%s]
""" % (TOPIC,)


class BrokerTestCase(unittest.TestCase):
    """
    A broker process on a work directory that outlives its restarts.
    """

    timeout = 60
    serverIni = SERVER_INI

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.config = os.path.join(self.workdir, "server.ini")
        with open(self.config, "w") as f:
            f.write(self.serverIni)
        self.broker = None
        self.client = None
        self.opaque = 0
        self.addCleanup(self.stopBroker)

    def partitionDirectory(self, partition=0):
        return os.path.join(self.workdir, "data", "%s-%d" % (TOPIC, partition))

    async def startBroker(self, faults=False):
        self.broker = startBroker(reactor, self.config, self.workdir, faults=faults)
        self.port = await self.broker.listening
        self.client = await connect(reactor, self.port)

    async def restart(self, faults=False):
        await self.stopBroker()
        await self.startBroker(faults)

    def stopBroker(self):
        if self.client is not None:
            self.client.transport.loseConnection()
            self.client = None
        if self.broker is not None:
            broker, self.broker = self.broker, None
            return broker.kill()
        return defer.succeed(None)

    def fault(self, name, on=True):
        path = os.path.join(self.workdir, "fault-" + name)
        if on:
            open(path, "w").close()
        else:
            os.remove(path)

    async def send(self, line, body=b""):
        self.opaque += 1
        return await self.client.request(line + b" %d\r\n" % (self.opaque,) + body, self.opaque)

    async def put(self, payload, partition=0, key=None):
        line = b"put %s %d %d 0 %d" % (TOPIC.encode(), partition, len(payload), checksum(payload))
        if key is not None:
            line += b" " + key
        return await self.send(line, payload)

    async def putOffset(self, payload, partition=0):
        reply = await self.put(payload, partition)
        self.assertEqual(reply.code, 200, reply)
        return int(reply.body.split()[2])

    async def get(self, offset, partition=0, maxSize=1 << 20):
        return await self.send(b"get %s g %d %d %d" % (TOPIC.encode(), partition, offset, maxSize))

    async def readAll(self, partition=0, offset=0):
        """
        Every record a consumer gets from C{offset} on, following 301s,
        as C{[(offset, payload)]}.
        """
        found = []
        for _ in range(10000):
            reply = await self.get(offset, partition)
            if isinstance(reply, ValueCommand):
                records, consumed = decodeRecords(reply.data)
                position = offset
                for record in records:
                    found.append((position, record.data))
                    position += record.size
                self.assertTrue(consumed, "a get at %d returned no whole record" % (offset,))
                offset += consumed
            elif reply.code == 301 and int(reply.body) > offset:
                offset = int(reply.body)
            else:
                self.assertIn(reply.code, (301, 404), reply)
                return found
        self.fail("the consumer did not reach the end")


class PrepareOnFullDiskTests(BrokerTestCase):
    """
    A PREPARE whose journal write fails leaves the transaction unprepared.
    """

    def xa(self, name):
        return ("XID:1:%s:01:%s" % (name.encode().hex(), QUALIFIER)).encode()

    async def command(self, key, kind):
        return await self.send(b"transaction %s s %s %s" % (key, kind, QUALIFIER.encode()))

    async def recover(self):
        reply = await self.send(b"transaction null s RECOVER %s" % (QUALIFIER.encode(),))
        self.assertEqual(reply.code, 200, reply)
        return set(reply.body.decode().split("\r\n")) - {""}

    async def begin(self, key, payload):
        self.assertEqual((await self.command(key, b"BEGIN")).code, 200)
        self.assertEqual((await self.put(payload, key=key)).code, 200)

    def test_failedPrepare(self):
        async def go():
            await self.startBroker(faults=True)
            retried, lost = self.xa("retried"), self.xa("lost")
            await self.begin(retried, b"retried")
            await self.begin(lost, b"lost")
            self.fault("journal-enospc")
            for key in (retried, lost):
                reply = await self.command(key, b"PREPARE")
                self.assertEqual(reply.code, 500)
                self.assertTrue(reply.body.startswith(b"XAException:code=-3,"), reply.body)
                self.assertIn(b"No space left on device", reply.body)
            self.assertEqual(await self.recover(), set())
            reply = await self.command(retried, b"COMMIT_TWO_PHASE")
            self.assertEqual(reply.code, 500, reply)
            self.fault("journal-enospc", on=False)
            self.assertEqual((await self.command(retried, b"PREPARE")).body, b"0")
            self.assertEqual(await self.recover(), {retried.decode()})
            await self.restart(faults=True)
            self.assertEqual(await self.recover(), {retried.decode()})
            self.assertEqual(await self.readAll(), [])
            self.assertEqual((await self.command(retried, b"COMMIT_TWO_PHASE")).code, 200)
            self.assertEqual([p for _, p in await self.readAll()], [b"retried"])

        return defer.ensureDeferred(go())


class CommitWithFailingFsyncTests(BrokerTestCase):
    """
    Commits whose journal fsync fails are not acknowledged, all of those
    the failed fsync covered (group commit: one fsync answers every commit
    requested while the previous one ran).
    """

    async def command(self, key, kind):
        return await self.send(b"transaction %s s %s" % (key, kind))

    async def begin(self, key, payload):
        self.assertEqual((await self.command(key, b"BEGIN")).code, 200)
        self.assertEqual((await self.put(payload, key=key)).code, 200)

    def test_commitsNotAcknowledged(self):
        async def go():
            await self.startBroker(faults=True)
            keys = [b"TX:fsync:%d" % (i,) for i in range(8)]
            for key in keys:
                await self.begin(key, key)
            self.fault("journal-fsync-eio")
            # All in flight together on one connection, as the Java
            # client's threads send them.
            replies = await defer.gatherResults(
                [defer.ensureDeferred(self.command(key, b"COMMIT_ONE_PHASE"))
                 for key in keys])
            self.assertEqual([reply.code for reply in replies], [500] * len(keys))
            for reply in replies:
                self.assertIn(b"Input/output error", reply.body)
            self.assertEqual(await self.readAll(), [])
            self.fault("journal-fsync-eio", on=False)
            await self.begin(b"TX:fsync:100", b"after")
            self.assertEqual((await self.command(b"TX:fsync:100", b"COMMIT_ONE_PHASE")).code, 200)
            self.assertEqual([p for _, p in await self.readAll()], [b"after"])
            # What the journal holds of the failed commits (their records
            # were written, then rolled back) is not committed by recovery.
            await self.restart(faults=True)
            self.assertEqual([p for _, p in await self.readAll()], [b"after"])

        return defer.ensureDeferred(go())


def segmentPath(directory, start=0):
    return os.path.join(directory, "%020d.meta" % (start,))


class DamagedPartitionTests(BrokerTestCase):
    """
    Segments that cannot be opened or that vanish: the partition takes no
    more writes, says why, and the other partitions carry on.
    """

    serverIni = SERVER_INI.replace(
        "numPartitions=2", "numPartitions=2\nmaxSegmentSize=200\nsegmentCheckInterval=100")

    async def stats(self, item=b""):
        reply = await self.send(b"stats " + item)
        self.assertEqual(reply.code, 200, reply)
        return reply.body.decode()

    def test_unopenableSegment(self):
        """
        The last segment cannot be opened at start (here a dangling link,
        as root ignores permissions): puts are refused with the reason,
        nothing is written over its offsets, other partitions serve.
        """
        async def go():
            await self.startBroker()
            offsets = [await self.putOffset(b"message-%03d" % (i,)) for i in range(30)]
            await self.stopBroker()
            directory = self.partitionDirectory()
            segments = sorted(os.listdir(directory))
            self.assertGreater(len(segments), 2)
            last = os.path.join(directory, segments[-1])
            os.rename(last, last + ".away")
            os.symlink(os.path.join(directory, "nowhere"), last)
            await self.startBroker()
            reply = await self.put(b"after")
            self.assertEqual(reply.code, 500)
            self.assertIn(b"read only", reply.body)
            self.assertIn(segments[-1].encode(), reply.body)
            self.assertEqual(sorted(os.listdir(directory)), sorted(segments + [
                segments[-1] + ".away"]))
            self.assertEqual(await self.putOffset(b"other", partition=1), 0)
            self.assertIn("read_only_partitions 1\r\n", await self.stats(b"damaged"))
            self.assertIn("disk part 0 read_only segment file(s) cannot be opened",
                          await self.stats(b"damaged"))
            self.assertIn(b"is not whole", self.broker.output)
            # Repaired by the operator: everything is there, writes go on
            # after the last acknowledged offset.
            await self.stopBroker()
            os.remove(last)
            os.rename(last + ".away", last)
            await self.startBroker()
            self.assertGreater(await self.putOffset(b"after"), offsets[-1])
            self.assertEqual(len(await self.readAll()), 31)

        return defer.ensureDeferred(go())

    def test_activeSegmentDeleted(self):
        """
        The active segment is deleted while the broker runs: the next put is
        refused (never acknowledged into the deleted file), an idle
        partition notices on the timer, and after a restart the partition
        stays read only rather than handing out the lost offsets again.
        """
        async def go():
            await self.startBroker()
            first = await self.putOffset(b"one")
            await self.putOffset(b"idle", partition=1)
            os.remove(segmentPath(self.partitionDirectory()))
            reply = await self.put(b"two")
            self.assertEqual(reply.code, 500, reply)
            self.assertIn(b"was deleted", reply.body)
            self.assertEqual((await self.put(b"three")).code, 500)
            os.remove(segmentPath(self.partitionDirectory(1)))
            async def bothReadOnly():
                return "read_only_partitions 2\r\n" in await self.stats(b"damaged")

            await waitFor(lambda: defer.ensureDeferred(bothReadOnly()), what="both read only")
            self.assertEqual((await self.put(b"idle", partition=1)).code, 500)
            for partition in (0, 1):
                marker = os.path.join(self.partitionDirectory(partition), "partition.damaged")
                await waitFor(lambda: os.path.exists(marker), what=marker)
            await self.restart()
            reply = await self.put(b"four")
            self.assertEqual(reply.code, 500, reply)
            self.assertIn(b"read only", reply.body)
            self.assertIn("read_only_partitions 2\r\n", await self.stats(b"damaged"))
            self.assertEqual(first, 0)

        return defer.ensureDeferred(go())


class DamagedRecordTests(BrokerTestCase):
    """
    Records whose bytes changed on disk are never served, the valid ones
    around them are, and a consumer moves past the damage.
    """

    serverIni = SERVER_INI.replace("numPartitions=2", "numPartitions=2\nmaxSegmentSize=300")

    def test_flippedByteInTheLastSegment(self):
        """
        One flipped byte in the last segment: after a restart every other
        acknowledged record is still served at its offset, a get at the
        damaged one moves the consumer on, and the next put gets a new
        offset.
        """
        async def go():
            await self.startBroker()
            acknowledged = [(await self.putOffset(b"record-%d" % (i,)), b"record-%d" % (i,))
                            for i in range(5)]
            await self.stopBroker()
            path = segmentPath(self.partitionDirectory())
            with open(path, "r+b") as f:
                f.seek(acknowledged[2][0] + 25)
                byte = f.read(1)
                f.seek(acknowledged[2][0] + 25)
                f.write(bytes([byte[0] ^ 0x20]))
            await self.startBroker()
            reply = await self.get(acknowledged[2][0])
            self.assertEqual((reply.code, int(reply.body)), (301, acknowledged[3][0]))
            self.assertEqual(await self.readAll(), acknowledged[:2] + acknowledged[3:])
            end = acknowledged[-1][0] + 20 + len(acknowledged[-1][1])
            self.assertEqual(await self.putOffset(b"next"), end)
            self.assertIn(b"Damaged records in", self.broker.output)

        return defer.ensureDeferred(go())

    def test_damagedSealedSegment(self):
        """
        A record rots in a sealed segment while the broker runs: a consumer
        that trips on it asks for the offset (as the Java and Python
        clients do), the segment is verified, and from then on the damaged
        record is skipped; stats report it.
        """
        async def go():
            await self.startBroker()
            acknowledged = [(await self.putOffset(b"payload-%02d" % (i,)), b"payload-%02d" % (i,))
                            for i in range(20)]
            directory = self.partitionDirectory()
            self.assertGreater(len(os.listdir(directory)), 1)
            victim = acknowledged[3][0]
            with open(segmentPath(directory), "r+b") as f:
                f.seek(victim + 22)
                f.write(b"X")
            # Served as it is until the broker knows.
            reply = await self.get(victim)
            self.assertIsInstance(reply, ValueCommand)
            offsetReply = await self.send(b"offset %s g 0 %d" % (TOPIC.encode(), victim))
            self.assertEqual(offsetReply.code, 200)
            async def skipped():
                return not isinstance(await self.get(victim), ValueCommand)

            await waitFor(lambda: defer.ensureDeferred(skipped()), what="damage found")
            reply = await self.get(victim)
            self.assertEqual((reply.code, int(reply.body)), (301, acknowledged[4][0]))
            served = await self.readAll()
            self.assertEqual(served, acknowledged[:3] + acknowledged[4:])
            damaged = (await self.send(b"stats damaged")).body.decode()
            self.assertIn("damaged_ranges 1\r\n", damaged)
            self.assertIn("damaged_gets ", damaged)
            self.assertIn("disk part 0 damaged %d %d" % (victim, acknowledged[4][0]), damaged)

        return defer.ensureDeferred(go())
