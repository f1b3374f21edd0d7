"""
Tests for L{metamorphosis.broker.service}: the broker with its real store on
a real loopback socket.
"""

import os
import subprocess
import sys

from twisted.application import service
from twisted.internet import defer, endpoints, reactor
from twisted.python import usage
from twisted.trial import unittest

import metamorphosis
from metamorphosis.broker.config import MetaConfig, TopicConfig, standaloneConfig
from metamorphosis.broker.listeners import Listener
from metamorphosis.broker.server import FileRegion
from metamorphosis.broker.service import BrokerService, Options
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords
from tests.broker.client import connect
from tests.waiting import waitFor


def transportBuffered(transport):
    """
    Bytes a Twisted TCP transport holds that the kernel has not taken yet.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class BrokerServiceTests(unittest.TestCase):
    timeout = 60

    def startBroker(self, config):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        broker = BrokerService(config, endpoint, reactor)
        broker.startService()
        self.addCleanup(broker.stopService)
        return broker.started.addCallback(lambda port: (broker, port.getHost().port))

    def config(self, **kwargs):
        config = MetaConfig(dataPath=self.mktemp(), hostName="127.0.0.1", **kwargs)
        config.topics = {"t": TopicConfig("t", numPartitions=2, dataPath=config.dataPath,
                                          unflushThreshold=0)}
        return config

    async def clientFor(self, port):
        client = await connect(reactor, port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    @defer.inlineCallbacks
    def test_putAndGet(self):
        broker, port = yield self.startBroker(self.config())
        client = yield defer.ensureDeferred(self.clientFor(port))
        reply = yield client.put("t", 1, b"hello", -7)
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body.split(b" ")[1:], [b"1", b"0"])
        reply = yield client.get("t", "g", 1, 0, 1024, 8)
        self.assertIsInstance(reply, ValueCommand)
        self.assertEqual([r.data for r in decodeRecords(reply.data)[0]], [b"hello"])
        reply = yield client.request(b"stats\r\n", 2147483647)
        self.assertIn(b"\r\nport %d\r\n" % (port,), reply.body)
        self.assertIn(b"\r\ncurr_connections 1\r\n", reply.body)

    async def test_maxConnections(self):
        """
        Past C{maxConnections} a new connection gets C{result 503} saying
        so and is closed; the open ones go on, and once one closes a new
        one is taken again.
        """
        broker, port = await self.startBroker(self.config(maxConnections=2))
        first, second = await self.clientFor(port), await self.clientFor(port)
        await waitFor(lambda: len(broker.factory.connections) == 2)
        refused = await connect(reactor, port)
        reply = await refused.expect(0)
        await refused.closed
        self.assertEqual((reply.code, reply.body),
                         (503, b"The broker has 2 connections open (maxConnections); try again later"))
        self.assertEqual([(await c.put("t", 0, b"m", 1)).code for c in (first, second)], [200, 200])
        first.transport.loseConnection()
        await first.closed
        await waitFor(lambda: len(broker.factory.connections) == 1)
        third = await self.clientFor(port)
        self.assertEqual((await third.put("t", 0, b"m", 2)).code, 200)

    async def test_maxConnectionsPerHost(self):
        """
        Past C{maxConnectionsPerHost} from one address a new connection
        from it gets C{result 503} saying so and is closed, while another
        address is still served; once one closes, its host may connect
        again.
        """
        broker, port = await self.startBroker(self.config(maxConnectionsPerHost=2))
        first, second = await self.clientFor(port), await self.clientFor(port)
        await waitFor(lambda: len(broker.factory.connections) == 2)
        refused = await connect(reactor, port)
        reply = await refused.expect(0)
        await refused.closed
        self.assertEqual(
            (reply.code, reply.body),
            (503, b"The broker has 2 connections open from 127.0.0.1 "
                  b"(maxConnectionsPerHost); try again later"))
        other = await connect(reactor, port, source="127.0.0.2")
        self.addCleanup(lambda: other.transport.loseConnection() or other.closed)
        self.assertEqual((await other.put("t", 0, b"m", 1)).code, 200)
        second.transport.loseConnection()
        await second.closed
        await waitFor(lambda: len(broker.factory.connections) == 2)
        third = await self.clientFor(port)
        self.assertEqual([(await c.put("t", 0, b"m", 2)).code for c in (first, third)],
                         [200, 200])

    @defer.inlineCallbacks
    def test_manyConnectionsPipelining(self):
        """
        200 connections each pipeline puts and gets at once; every request
        gets its reply, matched by opaque, and every message is stored once.
        """
        broker, port = yield self.startBroker(self.config())
        clients = yield defer.gatherResults(
            [defer.ensureDeferred(self.clientFor(port)) for _ in range(200)])
        perClient = 5
        requests = []
        for n, client in enumerate(clients):
            for i in range(perClient):
                opaque = n * 1000 + i
                requests.append(client.put("t", n % 2, b"m-%d-%d" % (n, i), opaque))
                requests.append(client.get("t", "g", n % 2, 0, 4096, -opaque - 1))
        replies = yield defer.gatherResults(requests)
        puts, gets = replies[::2], replies[1::2]
        self.assertTrue(all(r.code == 200 for r in puts))
        for reply in gets:
            self.assertTrue(isinstance(reply, ValueCommand) or reply.code == 404, reply)
        total = 0
        for partition in (0, 1):
            store = broker.storeManager.getStore("t", partition)
            total += store.messageCount
        self.assertEqual(total, 200 * perClient)
        offsets = {(int(r.body.split()[1]), int(r.body.split()[2])) for r in puts}
        self.assertEqual(len(offsets), 200 * perClient)

    @defer.inlineCallbacks
    def test_slowConsumerBounded(self):
        """
        A consumer that pipelines many 1 MiB gets and stops reading does not
        make the broker buffer their replies: what the broker holds for it
        stays around one reply, and the rest of the requests wait.
        """
        broker, port = yield self.startBroker(self.config())
        client = yield defer.ensureDeferred(self.clientFor(port))
        payload = os.urandom(1000 * 1000)
        yield client.put("t", 0, payload, 1)
        client.transport.pauseProducing()
        gets = 100
        for i in range(gets):
            client.expect(10 + i)
        client.transport.write(b"".join(
            b"get t g 0 0 1048576 %d\r\n" % (10 + i,) for i in range(gets)))
        [server] = broker.factory.connections
        # The broker reads on while replies pile up unsent, then stops.
        yield waitFor(lambda: len(server._commands) > gets // 2, what="the gets read")
        held = transportBuffered(server.transport)
        self.assertLess(held, 2 * 1024 * 1024)
        self.assertGreater(len(server._commands), gets // 2)
        self.assertLess(broker.stats.cmdGet, gets // 2)
        # Once the consumer reads again, every reply arrives.
        client.transport.resumeProducing()
        replies = yield defer.gatherResults(list(client.waiting.values()))
        self.assertEqual(len(replies), gets)
        self.assertTrue(all(len(r.data) == len(payload) + 20 for r in replies))

    @defer.inlineCallbacks
    def test_largeGetBySendfile(self):
        """
        Over plain TCP a C{get} reply body goes out with C{sendfile}, not
        through Python, even when it is larger than the socket buffers.
        """
        config = self.config(maxTransferSize=8 * 1024 * 1024)
        broker, port = yield self.startBroker(config)
        client = yield defer.ensureDeferred(self.clientFor(port))
        payloads = [os.urandom(3 * 1024 * 1024) for _ in range(2)]
        for i, payload in enumerate(payloads):
            reply = yield client.put("t", 0, payload, i)
            self.assertEqual(reply.code, 200)
        self.patch(FileRegion, "nextChunk", lambda region: self.fail("copied"))
        # Small replies written straight to the socket between large ones
        # keep their place in the stream.
        requests = []
        for i in range(3):
            requests.append(client.expect(10 + i))
            requests.append(client.expect(20 + i))
        client.transport.write(b"".join(
            b"get t g 0 0 %d %d\r\nversion %d\r\n" % (8 * 1024 * 1024, 10 + i, 20 + i)
            for i in range(3)))
        replies = yield defer.gatherResults(requests)
        for reply in replies[::2]:
            self.assertEqual([r.data for r in decodeRecords(reply.data)[0]], payloads)
        self.assertEqual({reply.body for reply in replies[1::2]}, {b"1.4.6.2"})

    @defer.inlineCallbacks
    def test_standaloneAnyTopic(self):
        config = standaloneConfig(self.mktemp())
        broker, port = yield self.startBroker(config)
        client = yield defer.ensureDeferred(self.clientFor(port))
        reply = yield client.put("whatever", -1, b"x", 3)
        self.assertEqual(reply.body.split(b" ")[1:], [b"0", b"0"])

    @defer.inlineCallbacks
    def test_idleConnectionReaped(self):
        config = self.config()
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        broker = BrokerService(config, endpoint, reactor, idleTimeout=0.5)
        broker.startService()
        self.addCleanup(broker.stopService)
        port = yield broker.started
        client = yield connect(reactor, port.getHost().port)
        yield client.closed

    @defer.inlineCallbacks
    def test_reloadTopics(self):
        path = self.mktemp()
        data = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[system]\ndataPath={data}\n[topic=a]\n")
        options = Options()
        options.parseOptions(["--config", path])
        broker, port = yield self.startBroker(options.metaConfig)
        client = yield defer.ensureDeferred(self.clientFor(port))
        reply = yield client.put("b", 0, b"x", 1)
        self.assertEqual(reply.code, 500)
        with open(path, "w") as f:
            f.write(f"[system]\ndataPath={data}\n[topic=a]\n[topic=b]\nnumPartitions=3\n")
        self.assertEqual(broker.reloadTopics(), ["b"])
        reply = yield client.put("b", 2, b"x", 2)
        self.assertEqual(reply.code, 200)
        # The broker remembers the store a put used only until the next
        # reload: a partition the topic no longer has is refused.
        with open(path, "w") as f:
            f.write(f"[system]\ndataPath={data}\n[topic=a]\n[topic=b]\nnumPartitions=2\n")
        broker.reloadTopics()
        reply = yield client.put("b", 2, b"x", 3)
        self.assertEqual(reply.code, 500)
        reply = yield client.put("b", 1, b"x", 4)
        self.assertEqual(reply.code, 200)


class CompositionTests(unittest.TestCase):
    """
    The order in which L{BrokerService} brings its parts up and down, and
    the listeners and services added to it.
    """

    timeout = 60

    async def test_order(self):
        """
        An added service starts once every listener listens and stops
        while they still do; an added listener serves the same broker; the
        stores are closed only once everything else has stopped.
        """
        config = MetaConfig(dataPath=self.mktemp(), hostName="127.0.0.1")
        config.topics = {"t": TopicConfig("t", dataPath=config.dataPath, unflushThreshold=0)}
        broker = BrokerService(config, endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                               reactor)
        broker.addListener(Listener("second", "tcp", endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")))
        seen = []

        class Beside(service.Service):
            async def _served(self, what):
                """
                Put through every listener, as seen at C{what}.
                """
                for port in broker.ports.values():
                    client = await connect(reactor, port.getHost().port)
                    reply = await client.put("t", 0, what.encode(), 1)
                    client.transport.loseConnection()
                    await client.closed
                    seen.append((what, reply.code, broker.storeManager.running))

            def startService(self):
                service.Service.startService(self)
                return defer.ensureDeferred(self._served("start"))

            def stopService(self):
                service.Service.stopService(self)
                return defer.ensureDeferred(self._served("stop"))

        broker.addService(Beside())
        broker.startService()
        await broker.started
        self.assertEqual(len(broker.ports), 2)
        self.assertEqual(seen, [("start", 200, True)] * 2)
        self.assertRaises(RuntimeError, broker.addService, service.Service())
        await broker.stopService()
        self.assertEqual(seen[2:], [("stop", 200, True)] * 2)
        self.assertEqual(broker.ports, {})
        self.assertFalse(broker.storeManager.running)


class OptionsTests(unittest.TestCase):
    def test_standaloneDefaults(self):
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.listeners, [("plain", "tcp:8123")])
        self.assertTrue(options.metaConfig.acceptAnyTopic)
        self.assertEqual(options.metaConfig.dataPath, "data")

    def test_overrides(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[system]\nserverPort=9001\n[topic=a]\n")
        options = Options()
        options.parseOptions(["--config", path, "--data-dir", "d", "--broker-id", "5",
                              "--host-name", "h", "--zookeeper", "127.0.0.1:1"])
        config = options.metaConfig
        self.assertEqual(options.listeners, [("plain", "tcp:9001")])
        self.assertEqual((config.brokerId, config.hostName, config.dataPath),
                         (5, "h", "d"))
        self.assertEqual(config.topicConfig("a").dataPath, "d")
        self.assertEqual(config.zookeeper.zkConnect, "127.0.0.1:1")
        self.assertTrue(config.zookeeper.zkEnable)
        options = Options()
        options.parseOptions(["--port", "9100"])
        self.assertEqual(options.listeners, [("port", "tcp:9100")])

    def test_listeners(self):
        """
        The [listeners] section replaces the serverPort listener; --port
        and --listen (repeatable) replace the section.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[system]\nserverPort=9001\n[listeners]\n"
                    "plain = tcp:9001:interface=127.0.0.1\ntls = ssl:9443:privateKey=k.pem\n")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.listeners, [("plain", "tcp:9001:interface=127.0.0.1"),
                                             ("tls", "ssl:9443:privateKey=k.pem")])
        options = Options()
        options.parseOptions(["--config", path, "--listen", "tcp:1", "--listen", "mtls:2"])
        self.assertEqual(options.listeners, [("listen1", "tcp:1"), ("listen2", "mtls:2")])
        options = Options()
        options.parseOptions(["--config", path, "-p", "7", "--listen", "ssl:2"])
        self.assertEqual(options.listeners, [("port", "tcp:7"), ("listen1", "ssl:2")])

    def test_zookeeperNeedsAPlainListener(self):
        """
        A broker registering in ZooKeeper needs a plain listener: that is
        the address Java clients read.
        """
        options = Options()
        e = self.assertRaises(usage.UsageError, options.parseOptions,
                              ["--zookeeper", "127.0.0.1:1", "--listen", "ssl:2"])
        self.assertIn("needs one plain listener", str(e))

    def test_badConfig(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[system]\nbrokerid=1\n")
        error = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])
        self.assertIn("Invalid config key:brokerid,do you mean 'brokerId'?", str(error))
        self.assertIn(path, str(error))

    def test_badOptions(self):
        """
        Every mistake on the command line is a L{usage.UsageError} naming
        what is wrong, which C{twistd} prints without a traceback.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        cases = [
            (["--broker-id", "x"], "--broker-id must be a number"),
            (["--idle-timeout", "soon"], "--idle-timeout must be a number"),
            (["--idle-timeout", "0"], "--idle-timeout must be a positive"),
            (["--port", "nosuchtype:1"], "bad endpoint 'nosuchtype:1'"),
            (["--port", "tcp:notaport"], "bad endpoint 'tcp:notaport'"),
            (["--replication", "nosuchmode"], "bad replication configuration"),
            (["--config", self.mktemp()], "bad configuration"),
            (["--data-dir", os.path.join(blocker, "data")], "cannot use the data directory"),
        ]
        for arguments, message in cases:
            error = self.assertRaises(usage.UsageError, Options().parseOptions, arguments)
            self.assertIn(message, str(error), arguments)


class PluginTests(unittest.TestCase):
    def test_discovered(self):
        """
        C{twistd metaq} finds the plugin in C{twisted/plugins}.
        """
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("metaq", makers)
        self.assertIs(makers["metaq"].options, Options)


#: The checkout under test, for the child processes' imports.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(metamorphosis.__file__)))


class FootprintTests(unittest.TestCase):
    def test_noHttpStackWithoutHttp(self):
        """
        A broker configured without C{dashboardHttpPort} never loads
        twisted.web or prometheus_client (about 5 MiB of its memory); one
        with it does.
        """
        script = (
            "import sys\n"
            "from twisted.internet import endpoints, reactor\n"
            "from metamorphosis.broker.config import MetaConfig\n"
            "from metamorphosis.broker.service import BrokerService\n"
            "http = sys.argv[1] == 'http'\n"
            "BrokerService(MetaConfig(dataPath=sys.argv[2]),\n"
            "              endpoints.TCP4ServerEndpoint(reactor, 0, interface='127.0.0.1'), reactor,\n"
            "              httpEndpoint=endpoints.TCP4ServerEndpoint(reactor, 0, interface='127.0.0.1')\n"
            "              if http else None)\n"
            "print(sorted(m for m in ('twisted.web.server', 'prometheus_client') if m in sys.modules))\n"
        )
        seen = {}
        for mode in ("plain", "http"):
            out = subprocess.run([sys.executable, "-c", script, mode, os.path.abspath(self.mktemp())],
                                 capture_output=True, text=True, check=True, cwd=CHECKOUT)
            seen[mode] = out.stdout.strip()
        self.assertEqual(seen, {"plain": "[]", "http": "['prometheus_client', 'twisted.web.server']"})
