"""
metaq topics and metaq groups against a real broker registered in a real
ZooKeeper.
"""

from kazoo.client import KazooClient
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from metamorphosis.tools.cli import openBroker
from metamorphosis.tools.topics import parseOffsetsReply, parseTopicsReply
from tests.tools.support import brokerUrl, runMetaq, startBroker
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def rows(out):
    """
    The table under the header line, as lists of cells.
    """
    return [line.split() for line in out.splitlines()[1:] if line and not line.startswith(" ")]


class ParsingTests(TestCase):
    def test_topicsReply(self):
        body = ("STATS\r\nt partitions 2 message_count 3 message_bytes 90 accept_publish true "
                "accept_subscribe true\r\nu *Empty*\r\nEND\r\n")
        self.assertEqual(parseTopicsReply(body), {"t": (3, 90), "u": (0, 0)})

    def test_offsetsReply(self):
        body = "STATS\r\nt part 0 min_offset 0 max_offset 90\r\nt part 1 min_offset 0 max_offset 0\r\nEND\r\n"
        self.assertEqual(parseOffsetsReply(body), {("t", 0): (0, 90), ("t", 1): (0, 0)})


class TopicsAndGroupsTests(TestCase):
    timeout = 90

    def setUp(self):
        self.root = uniqueRoot()
        self.zk = KazooClient(hosts=zookeeperAddress())
        self.zk.start(10)
        self.addCleanup(self.zk.stop)
        self.addCleanup(self.zk.delete, self.root, recursive=True)

    async def _broker(self):
        broker = await startBroker(self, {"t": 2, "u": 1}, zookeeperAddress(), self.root)
        client = await openBroker(reactor, brokerUrl(broker), 5.0)
        self.addCleanup(client.transport.loseConnection)
        for _ in range(3):
            self.assertEqual((await client.put("t", 0, b"0123456789", 0)).code, 200)
        await waitFor(lambda: self.zk.exists(self.root + "/brokers/topics-pub/u/0-m"),
                      what="the broker's topics in ZooKeeper")
        return broker

    def metaq(self, *args):
        return runMetaq("--zookeeper", zookeeperAddress(), "--zk-root", self.root, *args)

    def test_topics(self):
        """
        topics lists every topic with its partitions, brokers, messages and
        bytes; describe shows each partition's master and offsets; with
        --broker the one broker is asked; an unknown topic is an error.
        """
        async def check():
            broker = await self._broker()
            out, err, status = await self.metaq("topics")
            self.assertEqual(status, 0, err)
            self.assertEqual(out.splitlines()[0].split(),
                             ["TOPIC", "PARTITIONS", "BROKERS", "MESSAGES", "BYTES"])
            self.assertEqual(rows(out), [["t", "2", "0-m", "3", "90"], ["u", "1", "0-m", "0", "0"]])
            out, err, status = await self.metaq("topics", "describe", "t")
            self.assertEqual(status, 0, err)
            self.assertEqual(rows(out), [["0-0", brokerUrl(broker), "0", "90", "90"],
                                         ["0-1", brokerUrl(broker), "-", "-", "-"]])
            out, err, status = await runMetaq("--broker", brokerUrl(broker), "topics")
            self.assertEqual(status, 0, err)
            self.assertIn(["t", "1", "-", "3", "90"], rows(out))
            out, err, status = await self.metaq("topics", "describe", "nosuch")
            self.assertEqual(status, 1)
            self.assertIn("unknown topic 'nosuch'", err)
        return ensureDeferred(check())

    def test_groups(self):
        """
        groups lists the groups with their live consumers and topics;
        describe shows the committed offset, max offset, lag and owner.
        """
        async def check():
            await self._broker()
            base = self.root + "/consumers/g"
            self.zk.create(base + "/offsets/t/0-0", b"5-30", makepath=True)
            self.zk.create(base + "/ids/g_c1", b"t", ephemeral=True, makepath=True)
            self.zk.create(base + "/owners/t/0-0", b"g_c1", ephemeral=True, makepath=True)
            self.zk.create(self.root + "/consumers/idle/offsets/u/0-0", b"0", makepath=True)
            out, err, status = await self.metaq("groups")
            self.assertEqual(status, 0, err)
            self.assertEqual(rows(out), [["g", "1", "t"], ["idle", "0", "u"]])
            out, err, status = await self.metaq("groups", "describe", "g")
            self.assertEqual(status, 0, err)
            self.assertIn(["t", "0-0", "30", "90", "60", "g_c1"], rows(out))
            self.assertIn("consumers alive: 1", out)
        return ensureDeferred(check())
