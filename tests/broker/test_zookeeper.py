"""
Tests for L{metamorphosis.broker.zookeeper}, against a real ZooKeeper.

The reference is the Java broker's own registration: the subtree it wrote for
the conformance C{server.ini}, dumped in C{tests/data/transcripts/zk}.
"""

import socket
from dataclasses import replace

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

from metamorphosis.broker.config import TopicConfig, loadConfig
from metamorphosis.broker.service import BrokerService, zookeeperService
from metamorphosis.broker.zookeeper import BrokerZooKeeper
from metamorphosis.zk import textOf
from tests.broker.client import connect as brokerClient
from tests.captures import capturePath
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def referenceDump(name, root):
    """
    The C{/meta} subtree of one of the Java broker's ZooKeeper dumps, as
    lines of L{dumpTree}, with C{/meta} moved to C{root}.
    """
    path = capturePath("zk", name)
    lines = []
    for line in path.read_text().splitlines():
        if line == "/meta" or line.startswith("/meta ") or line.startswith("/meta/"):
            lines.append(root + line[len("/meta"):])
    return lines


def formatData(data):
    if data is None:
        return "(none)"
    text = ""
    for byte in data:
        if byte == 13:
            text += "\\r"
        elif byte == 10:
            text += "\\n"
        elif 32 <= byte < 127:
            text += chr(byte)
        else:
            text += "\\x%02x" % (byte,)
    return "'%s'" % (text,)


def dumpTree(client, root):
    """
    The subtree at C{root} in the format of the transcripts' dumps, one line
    per node in sorted order.  Blocks: run it in a thread.
    """
    lines = []

    def visit(path):
        data, stat = client.get(path)
        kind = "E" if stat.ephemeralOwner else "P"
        lines.append(
            "%s  [%s] children=%d dataVersion=%d data=%s"
            % (path, kind, stat.numChildren, stat.version, formatData(data))
        )
        for child in sorted(client.get_children(path)):
            visit(path + "/" + child)

    if not client.exists(root):
        return lines
    try:
        visit(root)
    except NoNodeError:
        # A node went while we walked: take a fresh snapshot.
        return dumpTree(client, root)
    return lines


def conformanceConfig(root, zkConnect=None, ini="broker"):
    """
    One of the conformance suite's configurations, by default
    C{conf/broker/server.ini} (brokerId 0, hostName 127.0.0.1, topics
    meta-test (1 partition), test (2), bench (1)), read as the broker reads
    it, with the test's ZooKeeper and root, short timeouts and no wait after
    unregistering.
    """
    path = capturePath("conf", ini, "server.ini")
    config = loadConfig(str(path))
    config.zookeeper = replace(
        config.zookeeper,
        zkConnect=zkConnect or zookeeperAddress(),
        zkRoot=root,
        zkSessionTimeoutMs=4000,
        zkConnectionTimeoutMs=4000,
        zkSyncTimeMs=0,
    )
    return config


class ZooKeeperTreeMixin:
    """
    A test's own root in the test ZooKeeper, read back as dump lines.
    """

    timeout = 60

    def setUp(self):
        self.address = zookeeperAddress()
        self.root = uniqueRoot()
        self.observer = KazooClient(hosts=self.address)
        self.observer.start()
        self.addCleanup(self.observer.close)
        self.addCleanup(self.observer.stop)
        self.addCleanup(self.observer.delete, self.root, recursive=True)

    def logObserver(self, event):
        self.logged.append(formatEvent(event))

    def dump(self):
        return deferToThread(dumpTree, self.observer, self.root)

    @inlineCallbacks
    def waitForTree(self, expected, seconds=20, normalize=lambda line: line):
        """
        Wait until the subtree is C{expected}, both with C{normalize}
        applied to each line (L{None}: leave the line out); fail with the
        difference otherwise.
        """
        def normalized(lines):
            lines = [normalize(line) for line in lines]
            return [line for line in lines if line is not None]

        expected = normalized(expected)
        for _ in range(int(seconds * 10)):
            tree = normalized((yield self.dump()))
            if tree == expected:
                return
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(tree, expected)


class BrokerZooKeeperTests(ZooKeeperTreeMixin, TestCase):
    """
    The znodes of a L{BrokerZooKeeper} through its life.
    """

    def startBroker(self, config, port=8123):
        broker = BrokerZooKeeper(config)
        broker.startService()
        self.addCleanup(lambda: broker.running and broker.stopService())
        if port is not None:
            broker.setBrokerAddress(port)
        return broker

    @inlineCallbacks
    def test_startMatchesJavaBroker(self):
        """
        After start the subtree is node for node, data for data and
        ephemerality for ephemerality what the Java broker wrote for the
        same configuration (zk-01-after-broker-start).
        """
        self.startBroker(conformanceConfig(self.root))
        yield self.waitForTree(referenceDump("zk-01-after-broker-start.txt", self.root))

    @inlineCallbacks
    def test_noRegistrationWithoutAddress(self):
        """
        Nothing is written before the broker's address is known.
        """
        broker = self.startBroker(conformanceConfig(self.root), port=None)
        yield deferLater(reactor, 1.0, lambda: None)
        self.assertEqual((yield self.dump()), [])
        broker.setBrokerAddress(9000, "10.0.0.5")
        yield self.waitForTree(
            [
                line.replace("127.0.0.1:8123", "10.0.0.5:9000")
                for line in referenceDump("zk-01-after-broker-start.txt", self.root)
            ]
        )

    @inlineCallbacks
    def test_registerTopic(self):
        """
        A topic created by a put gets its three nodes with the partition
        count of its section, or the default; a topic that does not accept
        publishing or subscribing is left out of C{topics-pub} resp.
        C{topics-sub}.  Known topics and wildcard names change nothing.
        """
        config = conformanceConfig(self.root)
        config.numPartitions = 3
        config.topics["private-*"] = TopicConfig(
            topic="private-*", numPartitions=5, acceptPublish=False
        )
        config.topics["hidden"] = TopicConfig(topic="hidden", acceptSubscribe=False)
        broker = self.startBroker(config)
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        expected += topicNodes(self.root, "hidden", 1, subscribe=False)
        yield self.waitForTree(sortedTree(expected))
        for topic in ["fresh", "private-1", "test", "private-*"]:
            broker.registerTopic(topic)
        expected += topicNodes(self.root, "fresh", 3)
        expected += topicNodes(self.root, "private-1", 5, publish=False)
        yield self.waitForTree(sortedTree(expected))

    @inlineCallbacks
    def test_registerTopicBeforeConnected(self):
        """
        Topics passed before the session is up are registered with it, after
        the configured ones.
        """
        broker = BrokerZooKeeper(conformanceConfig(self.root))
        broker.registerTopic("on-disk")
        broker.setBrokerAddress(8123)
        broker.startService()
        self.addCleanup(broker.stopService)
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        expected += topicNodes(self.root, "on-disk", 1)
        yield self.waitForTree(sortedTree(expected))

    @inlineCallbacks
    def test_sessionExpiry(self):
        """
        When the session expires (ZooKeeper deletes its ephemeral nodes),
        the broker registers everything again in its new session.
        """
        broker = self.startBroker(conformanceConfig(self.root))
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        broker.registerTopic("late")
        expected = sortedTree(expected + topicNodes(self.root, "late", 1))
        yield self.waitForTree(expected)
        oldSession = broker.client.client_id
        yield deferToThread(expireSession, self.address, oldSession)
        master = self.root + "/brokers/ids/0/master"
        for _ in range(200):
            owner = yield deferToThread(ownerOf, self.observer, master)
            if owner not in (None, oldSession[0]):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertNotEqual(broker.client.client_id[0], oldSession[0])
        yield self.waitForTree(expected)
        tree = yield deferToThread(ownersOf, self.observer, self.root)
        self.assertEqual(tree, {broker.client.client_id[0]})

    @inlineCallbacks
    def test_shutdown(self):
        """
        A broker that stops removes its ephemeral nodes and its
        C{ids/<id>} node, leaving the persistent topic parents.
        """
        broker = self.startBroker(conformanceConfig(self.root))
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        yield broker.stopService()
        tree = yield self.dump()
        self.assertEqual(tree, afterShutdown(expected))

    @inlineCallbacks
    def test_shutdownWithSlave(self):
        """
        When an async slave's node is still below C{ids/<id>}, stopping the
        master blanks C{ids/<id>} instead of deleting it.
        """
        broker = self.startBroker(conformanceConfig(self.root))
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        slavePath = self.root + "/brokers/ids/0/slave1"
        yield deferToThread(
            self.observer.create, slavePath, b"meta://127.0.0.1:8124", ephemeral=True
        )
        yield broker.stopService()
        tree = yield self.dump()
        idLine = [line for line in tree if line.startswith(self.root + "/brokers/ids/0 ")]
        self.assertEqual(
            idLine, [self.root + "/brokers/ids/0  [P] children=1 dataVersion=2 data=''"]
        )
        self.assertIn(slavePath, [line.split()[0] for line in tree])

    @inlineCallbacks
    def test_zooKeeperDownAtStart(self):
        """
        A broker whose ZooKeeper cannot be reached starts all the same and
        registers once ZooKeeper answers.
        """
        link = Link(self.address)
        broker = self.startBroker(conformanceConfig(self.root, zkConnect=link.address))
        self.assertTrue(broker.running)
        yield deferLater(reactor, 1.0, lambda: None)
        self.assertEqual((yield self.dump()), [])
        link.up()
        self.addCleanup(link.down)
        yield self.waitForTree(referenceDump("zk-01-after-broker-start.txt", self.root))

    @inlineCallbacks
    def test_shortOutage(self):
        """
        An outage shorter than the session timeout changes nothing: the
        session resumes with its nodes.
        """
        link = Link(self.address)
        link.up()
        self.addCleanup(link.down)
        config = conformanceConfig(self.root, zkConnect=link.address)
        config.zookeeper.zkSessionTimeoutMs = 10000
        broker = self.startBroker(config)
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        session = broker.client.client_id[0]
        self.assertEqual(broker.statsItems(), [("zk_state", "connected"), ("zk_registered", True)])
        yield link.down()
        yield waitFor(lambda: not broker.client.connected, what="the lost connection")
        self.assertFalse(broker.client.connected)
        yield waitFor(lambda: broker.state == "suspended", what="the suspended state")
        self.assertEqual(broker.statsItems(), [("zk_state", "suspended"), ("zk_registered", False)])
        link.up()
        yield self.waitForTree(expected)
        self.assertEqual(
            (yield deferToThread(ownersOf, self.observer, self.root)), {session}
        )
        yield waitFor(lambda: broker.statsItems()[1][1], what="registered again")
        self.assertEqual(broker.statsItems(), [("zk_state", "connected"), ("zk_registered", True)])

    @inlineCallbacks
    def test_longOutage(self):
        """
        After an outage longer than the session timeout ZooKeeper has
        dropped the broker's ephemeral nodes; once it is reachable again the
        broker registers everything in a new session.
        """
        link = Link(self.address)
        link.up()
        self.addCleanup(link.down)
        config = conformanceConfig(self.root, zkConnect=link.address)
        config.zookeeper.zkSessionTimeoutMs = 2000
        broker = self.startBroker(config)
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        session = broker.client.client_id[0]
        yield link.down()
        yield self.waitForTree(
            [
                line.replace("/ids/0  [P] children=2", "/ids/0  [P] children=0")
                for line in afterShutdown(expected, keepBrokerId=True)
            ]
        )
        # The broker cannot hear of the expiry; it presumes it after a
        # session timeout without ZooKeeper, and says so.
        yield waitFor(lambda: broker.state == "unreachable", what="the unreachable state")
        self.assertEqual(broker.statsItems(), [("zk_state", "unreachable"), ("zk_registered", False)])
        link.up()
        yield self.waitForTree(expected)
        owners = yield deferToThread(ownersOf, self.observer, self.root)
        self.assertEqual(len(owners), 1)
        self.assertNotIn(session, owners)
        yield waitFor(lambda: broker.statsItems()[1][1], what="registered again")
        self.assertEqual(broker.state, "connected")

    @inlineCallbacks
    def test_stopWhileZooKeeperDown(self):
        """
        Stopping a broker that never reached ZooKeeper, or lost it, does not
        hang.
        """
        link = Link(self.address)
        link.up()
        self.addCleanup(link.down)
        config = conformanceConfig(self.root, zkConnect=link.address)
        config.zookeeper.zkSyncTimeMs = 60000
        broker = self.startBroker(config)
        yield self.waitForTree(referenceDump("zk-01-after-broker-start.txt", self.root))
        yield link.down()
        yield broker.stopService()
        self.assertIsNone(broker.client)

        never = self.startBroker(
            conformanceConfig(self.root, zkConnect=Link(self.address).address)
        )
        yield deferLater(reactor, 0.5, lambda: None)
        yield never.stopService()

    @inlineCallbacks
    def test_stopWhileZooKeeperSilent(self):
        """
        When ZooKeeper stops answering, the removal is abandoned after
        C{zk.zkConnectionTimeoutMs} and the broker stops without the
        C{zk.zkSyncTimeMs} wait.
        """
        link = Link(self.address)
        link.up()
        self.addCleanup(link.down)
        config = conformanceConfig(self.root, zkConnect=link.address)
        config.zookeeper.zkSessionTimeoutMs = 10000
        config.zookeeper.zkConnectionTimeoutMs = 500
        config.zookeeper.zkSyncTimeMs = 60000
        self.logged = []
        globalLogPublisher.addObserver(self.logObserver)
        self.addCleanup(globalLogPublisher.removeObserver, self.logObserver)
        broker = self.startBroker(config)
        yield self.waitForTree(referenceDump("zk-01-after-broker-start.txt", self.root))
        link.freeze()
        yield broker.stopService()
        self.assertIn("ZooKeeper did not answer", " ".join(self.logged))

    @inlineCallbacks
    def test_asyncSlave(self):
        """
        A master and its async slave write the brokers subtree that the Java
        master and metaslave wrote (zk-07-ha-async-slave); the slave's
        shutdown removes only its own nodes.
        """
        master = self.startBroker(
            conformanceConfig(self.root, ini="ha-async-master"), port=8133
        )
        slave = BrokerZooKeeper(conformanceConfig(self.root, ini="ha-async-slave"), slaveId=0)
        slave.startService()
        self.addCleanup(lambda: slave.running and slave.stopService())
        slave.setBrokerAddress(8134)
        brokers = self.root + "/brokers"
        expected = [
            line
            for line in referenceDump("zk-07-ha-async-slave.txt", self.root)
            if line.startswith(brokers)
        ]
        onlyBrokers = lambda line: line if line.startswith(brokers) else None
        yield self.waitForTree(expected, normalize=onlyBrokers)
        yield slave.stopService()
        withoutSlave = sortedTree([line for line in expected if "slave0" not in line and "-s0" not in line])
        yield self.waitForTree(withoutSlave, normalize=onlyBrokers)
        self.assertTrue(master.running)

    @inlineCallbacks
    def test_unregisterEverything(self):
        """
        A broker can leave ZooKeeper and come back without closing its
        session; one that leaves before it starts registers nothing.
        """
        broker = self.startBroker(conformanceConfig(self.root))
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        removed = yield broker.unregisterEverything()
        self.assertTrue(removed)
        self.assertEqual((yield self.dump()), afterShutdown(expected))
        broker.registerTopic("while-away")
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual((yield self.dump()), afterShutdown(expected))
        broker.registerEverything()
        yield self.waitForTree(
            sortedTree(expected + topicNodes(self.root, "while-away", 1))
        )

        later = BrokerZooKeeper(conformanceConfig(uniqueRoot()))
        self.addCleanup(self.observer.delete, later.paths.root, recursive=True)
        later.unregisterEverything()
        later.startService()
        self.addCleanup(later.stopService)
        later.setBrokerAddress(8123)
        yield deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(
            (yield deferToThread(dumpTree, self.observer, later.paths.root)), []
        )

    @inlineCallbacks
    def test_reloadConfig(self):
        """
        A reloaded configuration updates the checksum, re-registers the
        topics whose partition count or visibility changed and registers new
        ones.
        """
        config = conformanceConfig(self.root)
        broker = self.startBroker(config)
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(expected)
        config.checksum = 1234
        config.topics["test"] = replace(config.topics["test"], numPartitions=4)
        config.topics["bench"] = replace(config.topics["bench"], acceptSubscribe=False)
        config.topics["newly"] = TopicConfig(topic="newly", numPartitions=2)
        broker.reloadConfig(config)
        changed = []
        for line in expected:
            if "/master_config_checksum " in line:
                line = line.replace("dataVersion=0 data='3346228108'", "dataVersion=1 data='1234'")
            if "/test/0-m " in line:
                line = line.replace(":2,", ":4,").replace("'2'", "'4'")
            if "/topics-sub/bench/0-m" in line:
                continue
            changed.append(line)
        changed += topicNodes(self.root, "newly", 2)
        yield self.waitForTree(sortedTree(changed))

    @inlineCallbacks
    def test_brokerIdConflict(self):
        """
        While another live broker at another address holds this broker id,
        nothing is registered; the broker takes over once it is gone.
        """
        master = self.root + "/brokers/ids/0/master"
        other = self.startBroker(conformanceConfig(self.root), port=None)
        other.setBrokerAddress(8123, "10.9.9.9")
        yield self.waitForTree(
            [
                line.replace("127.0.0.1", "10.9.9.9")
                for line in referenceDump("zk-01-after-broker-start.txt", self.root)
            ]
        )
        self.logged = []
        globalLogPublisher.addObserver(self.logObserver)
        self.addCleanup(globalLogPublisher.removeObserver, self.logObserver)
        broker = BrokerZooKeeper(conformanceConfig(self.root))
        broker.retryDelay = 0.2
        broker.startService()
        self.addCleanup(broker.stopService)
        broker.setBrokerAddress(8123)
        yield waitFor(lambda: "Broker id 0 is taken" in " ".join(self.logged),
                      what="the conflict")
        data, _ = yield deferToThread(self.observer.get, master)
        self.assertEqual(data, b"meta://10.9.9.9:8123")
        self.assertIn("Broker id 0 is taken", " ".join(self.logged))
        yield other.stopService()
        # ids/0 is written once more if the takeover came before the other
        # broker removed it.
        idNode = self.root + "/brokers/ids/0  [P] children=2 dataVersion="
        yield self.waitForTree(
            referenceDump("zk-01-after-broker-start.txt", self.root),
            normalize=lambda line: idNode if line.startswith(idNode) else line,
        )


    @inlineCallbacks
    def test_takeOverWhileAllowed(self):
        """
        A broker with C{takeOver} (a slave promoted by failover) replaces
        another live session's master node of its id - but only while its
        C{takeOver} check, asked just before, allows it.
        """
        master = self.root + "/brokers/ids/0/master"
        other = self.startBroker(conformanceConfig(self.root), port=None)
        other.setBrokerAddress(8123, "10.9.9.9")
        yield waitFor(lambda: deferToThread(self.observer.exists, master), what="the other broker")
        self.logged = []
        globalLogPublisher.addObserver(self.logObserver)
        self.addCleanup(globalLogPublisher.removeObserver, self.logObserver)
        allowed = []
        broker = BrokerZooKeeper(conformanceConfig(self.root))
        broker.takeOver = lambda: succeed(bool(allowed))
        broker.retryDelay = 0.2
        broker.startService()
        self.addCleanup(broker.stopService)
        broker.setBrokerAddress(8123)
        yield waitFor(lambda: "Broker id 0 is taken" in " ".join(self.logged), what="the conflict")
        data, _ = yield deferToThread(self.observer.get, master)
        self.assertEqual(data, b"meta://10.9.9.9:8123")
        allowed.append(True)
        # The takeover deletes the node before it writes its own: absent
        # between the two.
        yield waitFor(lambda: deferToThread(textOf, self.observer, master).addCallback(
            lambda text: text == broker.brokerString), what="the takeover")


class Link:
    """
    A TCP forwarder to ZooKeeper on a port of its own that the test turns
    on and off, to stage outages.
    """

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.factory = ProxyFactory(host, int(port))
        self.connections = []
        build = self.factory.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            self.connections.append(protocol)
            return protocol

        self.factory.buildProtocol = buildProtocol
        with socket.socket() as reserved:
            reserved.bind(("127.0.0.1", 0))
            self.port = reserved.getsockname()[1]
        self.address = "127.0.0.1:%d" % (self.port,)
        self.listening = None

    def up(self):
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")

    def freeze(self):
        """
        Stop forwarding without closing anything: ZooKeeper no longer
        answers, and nothing tells the client so.
        """
        for protocol in self.connections:
            protocol.transport.pauseProducing()
            protocol.peer.transport.pauseProducing()

    def down(self):
        """
        Stop listening and cut every forwarded connection.
        """
        for protocol in self.connections:
            protocol.transport.abortConnection()
        self.connections = []
        listening, self.listening = self.listening, None
        if listening is None:
            return succeed(None)
        return listening.stopListening()


def sortedTree(lines):
    """
    Dump lines in the depth-first, children-sorted order of L{dumpTree},
    with the children counts made right.
    """
    paths = {line.split("  ", 1)[0]: line for line in lines}
    counts = {}
    for path in paths:
        parent = path.rsplit("/", 1)[0]
        counts[parent] = counts.get(parent, 0) + 1
    result = []
    for path in sorted(paths, key=lambda path: path.split("/")):
        line = paths[path]
        head, rest = line.split(" children=", 1)
        rest = rest.split(" ", 1)[1]
        result.append("%s children=%d %s" % (head, counts.get(path, 0), rest))
    return result


def topicNodes(root, topic, numParts, publish=True, subscribe=True):
    """
    The dump lines of the nodes a master broker 0 writes for a topic.
    """
    topicBroker = "'{\"numParts\":%d,\"broker\":\"0-m\"}'" % (numParts,)
    lines = []
    for tree, data, present in [
        ("topics", "'%d'" % (numParts,), True),
        ("topics-pub", topicBroker, publish),
        ("topics-sub", topicBroker, subscribe),
    ]:
        if present:
            parent = "%s/brokers/%s/%s" % (root, tree, topic)
            lines.append(parent + "  [P] children=1 dataVersion=0 data=(none)")
            lines.append(parent + "/0-m  [E] children=0 dataVersion=0 data=" + data)
    return lines


def ownerOf(client, path):
    stat = client.exists(path)
    return stat.ephemeralOwner if stat else None


def ownersOf(client, root):
    """
    The sessions owning the ephemeral nodes below C{root}.
    """
    owners = set()

    def visit(path):
        stat = client.exists(path)
        if stat is None:
            return
        if stat.ephemeralOwner:
            owners.add(stat.ephemeralOwner)
        for child in client.get_children(path):
            visit(path + "/" + child)

    visit(root)
    return owners


def afterShutdown(lines, keepBrokerId=False):
    """
    A dump without the ephemeral nodes and (unless C{keepBrokerId})
    C{ids/<id>}, children counts made right.
    """
    kept = [
        line
        for line in lines
        if "[E]" not in line and (keepBrokerId or "/brokers/ids/" not in line)
    ]
    return sortedTree(kept)


def expireSession(address, clientId):
    """
    Expire a session for real: a second client joins it with its id and
    password and closes it, which makes ZooKeeper end the session and tell
    the first client so.
    """
    intruder = KazooClient(hosts=address, client_id=clientId)
    intruder.start()
    intruder.stop()
    intruder.close()


class BrokerServiceRegistrationTests(ZooKeeperTreeMixin, TestCase):
    """
    The registration of a whole broker (L{BrokerService}) on a real socket:
    what a put to a new topic and a restart over the same data do in
    ZooKeeper.
    """

    def brokerConfig(self, dataPath):
        config = conformanceConfig(self.root)
        config.dataPath = config.dataLogPath = dataPath
        for topic in config.topics.values():
            topic.dataPath = dataPath
        config.topics["new-*"] = TopicConfig(
            topic="new-*", numPartitions=3, dataPath=dataPath
        )
        return config

    @inlineCallbacks
    def startBroker(self, config):
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        broker = BrokerService(config, endpoint, reactor, zookeeper=zookeeperService(config))
        broker.startService()
        self.addCleanup(lambda: broker.running and broker.stopService())
        port = yield broker.started
        return broker, port.getHost().port

    def atPort(self, lines, port):
        return [line.replace("127.0.0.1:8123", "127.0.0.1:%d" % (port,)) for line in lines]

    @inlineCallbacks
    def test_putToNewTopicAndRestart(self):
        """
        A broker registers as the Java one does; a put that creates a topic
        registers it; a broker started again over the same data registers
        that topic from its store on disk; a stopped broker leaves nothing
        of its own.
        """
        dataPath = self.mktemp()
        broker, port = yield self.startBroker(self.brokerConfig(dataPath))
        expected = referenceDump("zk-01-after-broker-start.txt", self.root)
        yield self.waitForTree(self.atPort(expected, port))

        client = yield brokerClient(reactor, port)
        self.addCleanup(client.transport.loseConnection)
        reply = yield client.put("new-one", 2, b"hello", 7)
        self.assertEqual(reply.code, 200)
        withNew = sortedTree(expected + topicNodes(self.root, "new-one", 3))
        yield self.waitForTree(self.atPort(withNew, port))

        yield broker.stopService()
        self.assertEqual((yield self.dump()), afterShutdown(withNew))

        broker, port = yield self.startBroker(self.brokerConfig(dataPath))
        yield self.waitForTree(self.atPort(withNew, port))
