"""
metaq produce and metaq consume (the console producer and consumer)
against a real broker, with and without ZooKeeper.
"""

import os
import sys

from kazoo.client import KazooClient
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from tests.tools.support import brokerUrl, readTopic, runMetaq, startBroker
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


class HeadReader(protocol.ProcessProtocol):
    """
    Reads the first chunk of a process's stdout, then closes it, as
    C{head -1} does.
    """

    def __init__(self):
        self.err = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.transport.closeChildFD(1)

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback((reason.value.exitCode, self.err))

    def kill(self):
        if not self.ended.called:
            self.transport.signalProcess("KILL")
            return self.ended


class DirectTests(TestCase):
    """
    Without ZooKeeper: --broker and --partitions.
    """

    timeout = 90

    def test_produceThenConsume(self):
        """
        Every non-empty line of stdin is one message, spread over the
        partitions; consume --from-beginning --exit-at-end prints them all
        and stops; --max-messages stops early; --print-offsets prefixes the
        partition and offset; from the end (the default) there is nothing.
        """
        async def check():
            broker = await startBroker(self, {"console": 2})
            url = brokerUrl(broker)
            lines = [b"line %d" % (i,) for i in range(50)]
            out, err, status = await runMetaq(
                "--broker", url, "produce", "--topic", "console", "--partitions", "2",
                stdin=b"\n".join(lines[:25]) + b"\n\n" + b"\n".join(lines[25:]))
            self.assertEqual((status, out), (0, ""), err)
            stored = await readTopic(broker, "console", 2)
            self.assertEqual(sorted(stored[0] + stored[1]), sorted(lines))
            self.assertTrue(stored[0] and stored[1])

            consume = ("--broker", url, "consume", "--topic", "console", "--partitions", "2")
            out, err, status = await runMetaq(*consume, "--from-beginning", "--exit-at-end")
            self.assertEqual(status, 0, err)
            self.assertEqual(out.encode().splitlines(), stored[0] + stored[1])
            out, err, status = await runMetaq(*consume, "--from-beginning",
                                              "--max-messages", "3", "--print-offsets")
            self.assertEqual(status, 0, err)
            first = out.splitlines()
            self.assertEqual(len(first), 3)
            self.assertEqual(first[0], "0-0 0 " + stored[0][0].decode())
            self.assertTrue(first[1].startswith("0-0 %d " % (20 + len(stored[0][0]),)), first)
            out, err, status = await runMetaq(*consume, "--exit-at-end")
            self.assertEqual((status, out), (0, ""), err)
        return ensureDeferred(check())

    def test_outputClosed(self):
        """
        A reader that stops reading (metaq consume | head -1): consume
        stops quietly, status 0, nothing on stderr.
        """
        async def check():
            broker = await startBroker(self, {"console": 1})
            url = brokerUrl(broker)
            out, err, status = await runMetaq(
                "--broker", url, "produce", "--topic", "console",
                stdin=b"".join(b"line %d %s\n" % (i, b"x" * 100) for i in range(3000)))
            self.assertEqual(status, 0, err)
            # 300 kB, more than a pipe holds: the tool is still writing when
            # the reader goes.
            reader = HeadReader()
            self.addCleanup(reader.kill)
            reactor.spawnProcess(reader, sys.executable, [
                sys.executable, "-m", "metamorphosis.tools.main", "--broker", url, "consume",
                "--topic", "console", "--from-beginning"], env=os.environ)
            status, err = await reader.ended
            self.assertEqual((status, err), (0, b""))
        return ensureDeferred(check())

    def test_produceFailure(self):
        """
        A topic the broker does not carry: the put is refused, exit 1 with
        the reason.
        """
        async def check():
            broker = await startBroker(self, {"console": 1})
            out, err, status = await runMetaq(
                "--broker", brokerUrl(broker), "produce", "--topic", "other", stdin=b"x\n")
            self.assertEqual(status, 1)
            self.assertIn("0 message(s) acknowledged", err)
            self.assertEqual(len(err.splitlines()), 1, err)
        return ensureDeferred(check())


class ZooKeeperTests(TestCase):
    timeout = 90

    def test_produceThenConsume(self):
        """
        With ZooKeeper the brokers and partitions of the topic are found
        there.
        """
        async def check():
            root = uniqueRoot()
            zk = KazooClient(hosts=zookeeperAddress())
            zk.start(10)
            self.addCleanup(zk.stop)
            self.addCleanup(zk.delete, root, recursive=True)
            broker = await startBroker(self, {"console": 3}, zookeeperAddress(), root)
            await waitFor(lambda: zk.exists(root + "/brokers/topics-pub/console/0-m"),
                          what="the topic in ZooKeeper")
            shared = ("--zookeeper", zookeeperAddress(), "--zk-root", root)
            out, err, status = await runMetaq(*shared, "produce", "--topic", "console",
                                              stdin=b"a\nb\nc\nd\ne\nf\n")
            self.assertEqual(status, 0, err)
            out, err, status = await runMetaq(*shared, "consume", "--topic", "console",
                                              "--from-beginning", "--exit-at-end")
            self.assertEqual(status, 0, err)
            self.assertEqual(sorted(out.split()), ["a", "b", "c", "d", "e", "f"])
            stored = await readTopic(broker, "console", 3)
            self.assertEqual(sum(map(len, stored.values())), 6)
        return ensureDeferred(check())
