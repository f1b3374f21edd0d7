"""
The offsets tool against a real ZooKeeper and a real broker: committed
offsets from each storage, the broker's max offset, the lag, the owners,
and resetting an offset only when no consumer of the group is alive.
"""

import os
from datetime import UTC, datetime

from kazoo.client import KazooClient
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.client.offsets import (
    LocalOffsetStorage,
    PartitionOffset,
    SQLOffsetStorage,
    ZooKeeperOffsetStorage,
)
from metamorphosis.client.partition import Partition
from metamorphosis.tools.cli import openBroker
from tests.broker.httpsupport import HttpBroker
from tests.tools.support import brokerUrl, closedPort, runMetaq, runTool, startBroker
from tests.zookeeper import uniqueRoot, zookeeperAddress


def table(out):
    """
    The rows of the tool's table: (topic, partition) -> the other columns.
    """
    rows = {}
    for line in out.splitlines()[1:]:
        if line.startswith("consumers alive"):
            break
        topic, partition, *rest = line.split()
        rows[(topic, partition)] = rest
    return rows


class OffsetsToolTests(TestCase):
    timeout = 60

    def setUp(self):
        self.root = uniqueRoot()
        self.zk = KazooClient(hosts=zookeeperAddress())
        self.zk.start(10)
        self.addCleanup(self.zk.stop)
        self.addCleanup(self.zk.delete, self.root, recursive=True)

    async def _brokerWithMessages(self):
        """
        A broker with topic t (2 partitions): three 10-byte messages in
        partition 0 (max offset 90), none in partition 1.
        """
        broker = await startBroker(self, {"t": 2}, zookeeperAddress(), self.root)
        client = await openBroker(reactor, brokerUrl(broker), 5.0)
        self.addCleanup(client.transport.loseConnection)
        for _ in range(3):
            reply = await client.put("t", 0, b"0123456789", 0)
            self.assertEqual(reply.code, 200)
        return broker

    def _commit(self, storage, group, offsets):
        entries = [PartitionOffset("t", Partition.fromString(p), o, 7, modified=True)
                   for p, o in offsets.items()]
        return storage.commitOffset(group, entries)

    def _tool(self, *args):
        return runTool("offsets", "--zookeeper", zookeeperAddress(), "--zk-root", self.root,
                       *args)

    def _liveConsumer(self, group, consumerId):
        base = "%s/consumers/%s" % (self.root, group)
        self.zk.create("%s/ids/%s" % (base, consumerId), b"t", ephemeral=True, makepath=True)
        self.zk.create("%s/owners/t/0-0" % (base,), consumerId.encode(), ephemeral=True,
                       makepath=True)

    def test_lagAndOwners(self):
        """
        Per partition: the offset committed in ZooKeeper, the broker's max
        offset, their difference and the owning consumer.
        """
        async def check():
            await self._brokerWithMessages()
            await self._commit(ZooKeeperOffsetStorage(self.zk, self.root), "g", {"0-0": 30})
            self._liveConsumer("g", "g_host-1-abc")
            out, err, status = await self._tool("--group", "g")
            self.assertEqual(status, 0, err)
            rows = table(out)
            self.assertEqual(rows[("t", "0-0")], ["30", "90", "60", "g_host-1-abc"])
            self.assertEqual(rows[("t", "0-1")], ["-", "-", "-", "-"])
            self.assertIn("consumers alive: 1\n  g_host-1-abc", out)
        return ensureDeferred(check())

    def test_localFile(self):
        """
        --offsets-file reads the group's offsets from a local offset file.
        """
        async def check():
            await self._brokerWithMessages()
            path = os.path.abspath(self.mktemp())
            await self._commit(LocalOffsetStorage(path), "g", {"0-0": 60})
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--offsets-file", path)
            self.assertEqual(status, 0, err)
            self.assertEqual(table(out)[("t", "0-0")], ["60", "90", "30", "-"])
        return ensureDeferred(check())

    def test_sqlDatabase(self):
        """
        --offsets-url reads the group's offsets from a database (SQLite
        here, through the client's SQLOffsetStorage).
        """
        async def check():
            await self._brokerWithMessages()
            url = "sqlite:///" + os.path.abspath(self.mktemp())
            storage = SQLOffsetStorage.fromURL(url)
            await self._commit(storage, "g", {"0-0": 90})
            await storage.close()
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--offsets-url", url)
            self.assertEqual(status, 0, err)
            self.assertEqual(table(out)[("t", "0-0")], ["90", "90", "0", "-"])
        return ensureDeferred(check())

    def test_badOffsetsUrl(self):
        """
        An offsets URL of no known kind: a message and status 1.
        """
        async def check():
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--offsets-url", "oracle://db/x")
            self.assertEqual(status, 1)
            self.assertIn("bad --offsets-url: Unsupported offset storage URL", err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_directMode(self):
        """
        Without ZooKeeper, --broker and --partitions name the partitions of
        a group kept in a local offset file.
        """
        async def check():
            broker = await self._brokerWithMessages()
            path = os.path.abspath(self.mktemp())
            await self._commit(LocalOffsetStorage(path), "g", {"0-1": 0})
            out, err, status = await runTool(
                "offsets", "--broker", brokerUrl(broker), "--partitions", "2", "--topic", "t",
                "--group", "g", "--offsets-file", path)
            self.assertEqual(status, 0, err)
            rows = table(out)
            self.assertEqual(rows[("t", "0-0")], ["-", "90", "-", "-"])
            self.assertEqual(rows[("t", "0-1")][0], "0")
        return ensureDeferred(check())

    def test_setRefusedWhileConsumersAlive(self):
        """
        --set is refused while a consumer of the group is registered, and
        the committed offset is left alone.
        """
        async def check():
            await self._brokerWithMessages()
            storage = ZooKeeperOffsetStorage(self.zk, self.root)
            await self._commit(storage, "g", {"0-0": 30})
            self._liveConsumer("g", "g_host-1-abc")
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--partition", "0-0", "--set", "0")
            self.assertEqual(status, 1)
            self.assertIn("consumer(s) of group 'g' alive (g_host-1-abc)", err)
            self.assertNotIn("Traceback", err)
            self.assertEqual((await storage.load("t", "g", Partition(0, 0))).offset, 30)
        return ensureDeferred(check())

    def test_set(self):
        """
        With no consumer alive, --set writes the committed offset, unless
        it is beyond the broker's max offset.
        """
        async def check():
            await self._brokerWithMessages()
            storage = ZooKeeperOffsetStorage(self.zk, self.root)
            await self._commit(storage, "g", {"0-0": 30})
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--partition", "0-0", "--set", "90")
            self.assertEqual(status, 0, err)
            self.assertEqual((await storage.load("t", "g", Partition(0, 0))).offset, 90)
            out, err, status = await self._tool("--group", "g")
            self.assertEqual(table(out)[("t", "0-0")][:3], ["90", "90", "0"])
            out, err, status = await self._tool("--group", "g", "--topic", "t",
                                                "--partition", "0-0", "--set", "91")
            self.assertEqual(status, 1)
            self.assertIn("91 is beyond the max offset 90 of t 0-0", err)
            self.assertEqual((await storage.load("t", "g", Partition(0, 0))).offset, 90)
        return ensureDeferred(check())

    def test_resetModes(self):
        """
        metaq offsets resets to earliest, latest, a message's start (not
        the middle of one) or by a number of messages, for one partition
        or every partition of the topic.
        """
        async def check():
            await self._brokerWithMessages()
            storage = ZooKeeperOffsetStorage(self.zk, self.root)
            await self._commit(storage, "g", {"0-0": 30})

            async def committed():
                loaded = await storage.load("t", "g", Partition(0, 0))
                return loaded.offset

            async def reset(*args):
                out, err, status = await runMetaq(
                    "--zookeeper", zookeeperAddress(), "--zk-root", self.root,
                    "offsets", "--group", "g", "--topic", "t", *args)
                return out, err, status

            out, err, status = await reset("--partition", "0-0", "--reset-to", "latest")
            self.assertEqual(status, 0, err)
            self.assertIn("g t 0-0: committed offset set to 90 (was 30)", out)
            self.assertEqual(await committed(), 90)
            out, err, status = await reset("--partition", "0-0", "--shift", "-2")
            self.assertEqual((status, await committed()), (0, 30), err)
            out, err, status = await reset("--partition", "0-0", "--shift", "1")
            self.assertEqual((status, await committed()), (0, 60), err)
            out, err, status = await reset("--partition", "0-0", "--shift", "5")
            self.assertEqual((status, await committed()), (0, 90), err)
            out, err, status = await reset("--partition", "0-0", "--shift", "-9")
            self.assertEqual((status, await committed()), (0, 0), err)
            out, err, status = await reset("--partition", "0-0", "--reset-to", "60")
            self.assertEqual((status, await committed()), (0, 60), err)
            out, err, status = await reset("--partition", "0-0", "--reset-to", "45")
            self.assertEqual(status, 1)
            self.assertIn("no message of t 0-0 starts at 45: the nearest start at 30 and 60",
                          err)
            self.assertEqual(await committed(), 60)
            # Every partition of the topic: 0-1 has no message, so refused
            # as a whole, and nothing is written.
            out, err, status = await reset("--reset-to", "earliest")
            self.assertEqual(status, 1)
            self.assertIn("0-1 does not know the partition", err)
            self.assertEqual(await committed(), 60)
        return ensureDeferred(check())

    def test_resetToTime(self):
        """
        --reset-to TIME asks the broker's HTTP endpoint: the start of the
        first segment last written at or after the time, or the end.
        """
        async def check():
            broker = await HttpBroker.start(self, {"t": 1}, zookeeperAddress(), self.root,
                                            system=["maxSegmentSize=60"])
            await broker.put("t", 0, [b"0123456789"] * 5)
            directory = os.path.join(broker.folder, "data", "t-0")
            for name, seconds in [("00000000000000000000.meta", 1000),
                                  ("00000000000000000060.meta", 2000),
                                  ("00000000000000000120.meta", 3000)]:
                os.utime(os.path.join(directory, name), (seconds, seconds))
            storage = ZooKeeperOffsetStorage(self.zk, self.root)

            async def resetTo(seconds):
                out, err, status = await self._tool(
                    "--group", "g", "--topic", "t", "--http-port", str(broker.httpPort),
                    "--reset-to", datetime.fromtimestamp(seconds, UTC).isoformat())
                self.assertEqual(status, 0, err)
                return (await storage.load("t", "g", Partition(3, 0))).offset

            self.assertEqual(await resetTo(500), 0)
            self.assertEqual(await resetTo(1500), 60)
            self.assertEqual(await resetTo(2500), 120)
            self.assertEqual(await resetTo(4000), 150)
            out, err, status = await self._tool(
                "--group", "g", "--topic", "t", "--http-port", str(closedPort()),
                "--reset-to", "2026-01-01T00:00:00")
            self.assertEqual(status, 1)
            self.assertIn("is the broker's HTTP endpoint on port", err)
        return ensureDeferred(check())

    def test_unknownGroup(self):
        """
        A group that is nowhere: a message and status 1.
        """
        async def check():
            out, err, status = await self._tool("--group", "nobody")
            self.assertEqual(status, 1)
            self.assertIn("unknown group 'nobody'", err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_unreachableZooKeeper(self):
        """
        No ZooKeeper: a message and status 1 once the timeout passed.
        """
        async def check():
            address = "127.0.0.1:%d" % (closedPort(),)
            out, err, status = await runTool("offsets", "--zookeeper", address,
                                             "--timeout", "1", "--group", "g")
            self.assertEqual(status, 1)
            self.assertIn("cannot connect to ZooKeeper at " + address, err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())
