"""
The Python consumer against our broker and a real ZooKeeper: consuming
across brokers and partitions, groups of two and three, every offset
storage across a consumer restart, broadcast, local recovery across a
restart, a broker restarted mid-consumption and an expired ZooKeeper
session.  Each test checks that every message produced is received exactly
once (by the group), or as often as broadcast promises.
"""

import collections
import os
import threading
import time
import uuid

from kazoo.client import KazooClient
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.trial.unittest import TestCase

from metamorphosis.broker.config import MetaConfig, TopicConfig, ZookeeperConfig
from metamorphosis.broker.service import BrokerService
from metamorphosis.broker.zookeeper import BrokerZooKeeper
from metamorphosis.client.blocking import BlockingMessageSessionFactory
from metamorphosis.client.connection import ConnectionPool
from metamorphosis.client.consumer import ConsumerConfig, MessageConsumer, broadcastGroup
from metamorphosis.client.fetch import MessageIdCache
from metamorphosis.client.message import Message
from metamorphosis.client.offsets import LocalOffsetStorage, SQLOffsetStorage
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.protocol.records import checksum, encodePayload
from metamorphosis.zk import kazooLogger
from tests.sqlservers import MARIADB, POSTGRESQL
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class Broker:
    """
    One of our brokers, in process, registered in the test's ZooKeeper
    root; restartable on the same port and data directory.
    """

    def __init__(self, testCase, root, brokerId, topics, dataPath):
        self.testCase = testCase
        self.root = root
        self.brokerId = brokerId
        self.topics = topics
        self.dataPath = dataPath
        self.port = 0
        self.service = None

    def config(self):
        config = MetaConfig(
            brokerId=self.brokerId, hostName="127.0.0.1", dataPath=self.dataPath,
            zookeeper=ZookeeperConfig(zkConnect=zookeeperAddress(), zkRoot=self.root,
                                      zkSessionTimeoutMs=4000, zkConnectionTimeoutMs=4000,
                                      zkSyncTimeMs=0))
        for topic, numPartitions in self.topics.items():
            config.topics[topic] = TopicConfig(topic, numPartitions=numPartitions,
                                               dataPath=self.dataPath, unflushThreshold=0)
        return config

    @defer.inlineCallbacks
    def start(self):
        config = self.config()
        endpoint = endpoints.TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1")
        self.service = BrokerService(config, endpoint, reactor,
                                     zookeeper=BrokerZooKeeper(config, reactor=reactor))
        self.service.startService()
        port = yield self.service.started
        self.port = port.getHost().port
        self.url = "meta://127.0.0.1:%d" % (self.port,)
        # Registration goes on after the port listens; wait for it so that
        # consumers see the partitions at their first rebalance.
        paths = ["%s/brokers/topics-sub/%s/%d-m" % (self.root, topic, self.brokerId)
                 for topic in self.topics]
        paths.append("%s/brokers/ids/%d/master" % (self.root, self.brokerId))
        yield waitFor(
            lambda: threads.deferToThread(
                lambda: all(self.testCase.zk.exists(path) for path in paths)),
            what="the registration of broker %d in ZooKeeper" % (self.brokerId,))

    def stop(self):
        service, self.service = self.service, None
        if service is not None and service.running:
            return service.stopService()
        return defer.succeed(None)


class Collector:
    """
    A listener that records what it receives, and may fail on purpose.
    """

    def __init__(self, failOn=()):
        self.messages = []
        self.failOn = set(failOn)

    def receiveMessages(self, message):
        if message.data in self.failOn:
            raise RuntimeError("failing on %r on purpose" % (message.data,))
        self.messages.append(message)

    def payloads(self):
        return [m.data for m in self.messages]


class ConsumerIntegrationMixin:
    timeout = 120
    topics = {"t": 2}

    @defer.inlineCallbacks
    def setUp(self):
        self.root = uniqueRoot("metaq-consumer")
        self.brokers = []
        self.pool = ConnectionPool(reactor)
        self.addCleanup(self.pool.close)
        self.zk = yield self.zookeeper()
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    @defer.inlineCallbacks
    def zookeeper(self):
        client = KazooClient(hosts=zookeeperAddress(), logger=kazooLogger())
        yield threads.deferToThread(client.start)
        self.addCleanup(threads.deferToThread, client.close)
        self.addCleanup(threads.deferToThread, client.stop)
        return client

    @defer.inlineCallbacks
    def startBroker(self, brokerId=0, topics=None):
        broker = Broker(self, self.root, brokerId, topics or self.topics,
                        os.path.join(self.tmp, "broker%d" % brokerId))
        yield broker.start()
        self.addCleanup(broker.stop)
        self.brokers.append(broker)
        return broker

    @defer.inlineCallbacks
    def produce(self, broker, topic, partition, payloads):
        connection = self.pool.connection(broker.url)
        for payload in payloads:
            body, flag = encodePayload(payload, None)
            reply = yield connection.request("put", topic, partition, body, flag,
                                             checksum(body), timeout=5.0)
            self.assertEqual(reply.code, 200, reply)

    def config(self, group="grp", **kw):
        kw.setdefault("maxDelayFetchTimeInMills", 300)
        kw.setdefault("commitOffsetPeriodInMills", 300)
        kw.setdefault("zkSyncTimeMs", 200)
        kw.setdefault("recoverPath", os.path.join(self.tmp, "recover"))
        return ConsumerConfig(group, **kw)

    @defer.inlineCallbacks
    def consumer(self, listener, config=None, topic="t", zk=None, **kw):
        if zk is None:
            zk = yield self.zookeeper()
        # A cache of its own, as in a process of its own: the process-wide
        # duplicate filter would hide messages delivered twice.
        kw.setdefault("idCache", MessageIdCache())
        consumer = MessageConsumer(config or self.config(), self.pool, zk, self.root,
                                   reactor=reactor, **kw)
        consumer.subscribe(topic, 1024 * 1024, listener)
        self.addCleanup(consumer.shutdown)
        yield consumer.completeSubscribe()
        return consumer

    def waitFor(self, condition, what="condition"):
        return waitFor(condition, what=what)

    def assertExactlyOnce(self, received, expected):
        counts = collections.Counter(received)
        self.assertEqual(sorted(counts), sorted(expected))
        self.assertEqual({k: v for k, v in counts.items() if v > 1}, {})


class ConsumeTests(ConsumerIntegrationMixin, TestCase):
    topics = {"t": 2}

    @defer.inlineCallbacks
    def test_acrossBrokersAndPartitions(self):
        """
        One consumer reads every partition of two brokers; its offsets end
        up in ZooKeeper as C{<msgId>-<offset>}.
        """
        brokers = [(yield self.startBroker(0)), (yield self.startBroker(1))]
        expected = []
        for broker in brokers:
            for partition in range(2):
                payloads = [b"b%d-p%d-%d" % (broker.brokerId, partition, i) for i in range(10)]
                yield self.produce(broker, "t", partition, payloads)
                expected += payloads
        listener = Collector()
        consumer = yield self.consumer(listener)
        yield self.waitFor(lambda: len(listener.messages) >= len(expected), what="all messages")
        self.assertExactlyOnce(listener.payloads(), expected)
        self.assertEqual(consumer.ownedPartitions(),
                         [("t", _p(b, p)) for b in range(2) for p in range(2)])
        byPartition = collections.defaultdict(list)
        for m in listener.messages:
            byPartition[str(m.partition)].append(m.data)
        for key, payloads in byPartition.items():
            self.assertEqual(payloads, sorted(payloads, key=lambda p: int(p.split(b"-")[2])))
        yield consumer.shutdown()
        data, _ = yield threads.deferToThread(
            self.zk.get, "%s/consumers/grp/offsets/t/1-1" % (self.root,))
        last = [m for m in listener.messages if str(m.partition) == "1-1"][-1]
        msgId, offset = data.decode().rsplit("-", 1)
        self.assertEqual(int(msgId), last.id)
        self.assertEqual(int(offset), 10 * (20 + len(b"b1-p1-0")))

    @defer.inlineCallbacks
    def test_groupOfThreeThenTwo(self):
        """
        Three consumers split six partitions (no overlap, no gap); one
        leaves and the two others take over its partitions; nothing is lost
        or received twice.
        """
        broker = yield self.startBroker(0, {"t": 6})
        listeners = [Collector() for _ in range(3)]
        consumers = []
        for n, listener in enumerate(listeners):
            consumers.append((yield self.consumer(listener, self.config(consumerId="c%d" % n))))

        def shares():
            return [set(c.ownedPartitions()) for c in consumers if not c.closed]
        yield self.waitFor(lambda: [len(s) for s in shares()] == [2, 2, 2], what="2-2-2 split")
        self.assertEqual(set.union(*shares()), {("t", _p(0, i)) for i in range(6)})

        first = [b"first-%d-%d" % (p, i) for p in range(6) for i in range(5)]
        for p in range(6):
            yield self.produce(broker, "t", p, [m for m in first if m.startswith(b"first-%d-" % p)])
        yield self.waitFor(lambda: sum(len(c.messages) for c in listeners) >= len(first))
        for listener, consumer in zip(listeners, consumers):
            self.assertEqual({str(m.partition) for m in listener.messages},
                             {str(p) for _, p in consumer.ownedPartitions()})

        yield consumers[1].shutdown()
        yield self.waitFor(lambda: sorted(len(s) for s in shares()) == [3, 3], what="3-3 split")
        second = [b"second-%d-%d" % (p, i) for p in range(6) for i in range(5)]
        for p in range(6):
            yield self.produce(broker, "t", p,
                               [m for m in second if m.startswith(b"second-%d-" % p)])
        yield self.waitFor(lambda: sum(len(c.messages) for c in listeners) >= len(first + second))
        yield sleep(0.5)
        self.assertExactlyOnce([m for c in listeners for m in c.payloads()], first + second)

    @defer.inlineCallbacks
    def test_consumeFromMaxOffset(self):
        """
        A group with no stored offset told to start at the end asks for
        Long.MAX_VALUE; the broker's 301 moves it to the end: old messages
        are not received, new ones are.
        """
        broker = yield self.startBroker(0)
        yield self.produce(broker, "t", 0, [b"old-%d" % i for i in range(5)])
        listener = Collector()
        config = self.config()
        config.setConsumeFromMaxOffset()
        consumer = yield self.consumer(listener, config)

        def movedToTheEnd():
            # The broker's 301 has replaced Long.MAX_VALUE with its end
            # offset: messages produced from now on are after it.
            return [r.offset for r in consumer.fetchManager.requests
                    if str(r.partition) == "0-0"] == [5 * (20 + len(b"old-0"))]
        yield self.waitFor(movedToTheEnd, what="the 301 to the end of partition 0-0")
        yield self.produce(broker, "t", 0, [b"new-0", b"new-1"])
        yield self.waitFor(lambda: len(listener.messages) >= 2)
        yield sleep(0.3)
        self.assertEqual(listener.payloads(), [b"new-0", b"new-1"])

    @defer.inlineCallbacks
    def test_directModeAndGet(self):
        """
        Without ZooKeeper a consumer reads the configured partition of the
        configured broker; a one-shot get reads from any offset.
        """
        broker = yield self.startBroker(0)
        yield self.produce(broker, "t", 1, [b"d0", b"d1", b"d2"])
        yield self.produce(broker, "t", 0, [b"other"])
        listener = Collector()
        config = self.config("direct", serverUrl=broker.url, partition="0-1")
        consumer = MessageConsumer(config, self.pool, reactor=reactor, idCache=MessageIdCache(),
                                   offsetStorage=LocalOffsetStorage(
                                       os.path.join(self.tmp, "direct.json")))
        consumer.subscribe("t", 1024 * 1024, listener)
        self.addCleanup(consumer.shutdown)
        yield consumer.completeSubscribe()
        yield self.waitFor(lambda: len(listener.messages) >= 3)
        self.assertEqual(listener.payloads(), [b"d0", b"d1", b"d2"])
        messages = yield defer.ensureDeferred(
            consumer.get("t", _p(0, 1), 20 + 2, 1024, broker.url))
        self.assertEqual([m.data for m in messages], [b"d1", b"d2"])
        self.assertEqual([m.id for m in messages], [m.id for m in listener.messages[1:]])

    @defer.inlineCallbacks
    def test_unacknowledgedRedelivered(self):
        """
        Messages consumed with auto-ack off and never acknowledged are not
        committed: a restarted consumer gets them again; acknowledged ones
        it does not.
        """
        broker = yield self.startBroker(0, {"t": 1})
        yield self.produce(broker, "t", 0, [b"m%d" % i for i in range(6)])

        class Manual(Collector):
            def receiveMessages(self, message):
                message.setAutoAck(False)
                Collector.receiveMessages(self, message)
                if message.data == b"m2":
                    message.ack()
        first = Manual()
        consumer = yield self.consumer(first)
        yield self.waitFor(lambda: len(first.messages) >= 6)
        yield consumer.shutdown()
        second = Collector()
        yield self.consumer(second)
        yield self.waitFor(lambda: len(second.messages) >= 3)
        yield sleep(0.3)
        self.assertEqual(second.payloads(), [b"m3", b"m4", b"m5"])

    @defer.inlineCallbacks
    def test_offsetInsideAMessage(self):
        """
        A stored offset inside a message (transcript 07): the bytes there
        fail their checksum, the consumer asks C{offset}, refetches from
        the segment start the broker gives and receives every message
        once.
        """
        broker = yield self.startBroker(0, {"t": 1})
        expected = [b"msg-%d-" % i + b"x" * 26 for i in range(6)]
        yield self.produce(broker, "t", 0, expected)
        yield threads.deferToThread(
            self.zk.create, "%s/consumers/grp-inv/offsets/t/0-0" % (self.root,), b"-1-16",
            makepath=True)
        listener = Collector()
        consumer = yield self.consumer(listener, self.config("grp-inv"))
        yield self.waitFor(lambda: len(listener.messages) >= 6)
        yield consumer.shutdown()
        self.assertEqual(listener.payloads(), expected)
        data, _ = yield threads.deferToThread(
            self.zk.get, "%s/consumers/grp-inv/offsets/t/0-0" % (self.root,))
        self.assertEqual(data.decode(), "%d-%d" % (listener.messages[-1].id, 6 * (20 + 32)))

    @defer.inlineCallbacks
    def test_broadcast(self):
        """
        Broadcast consumers of one group on two hosts each get every
        message.
        """
        broker = yield self.startBroker(0)
        listeners = []
        for host in ("10.0.0.1", "10.0.0.2"):
            listener = Collector()
            config = self.config(group=broadcastGroup("bc", host))
            storage = LocalOffsetStorage(os.path.join(self.tmp, host + ".offsets"))
            yield self.consumer(listener, config, offsetStorage=storage)
            listeners.append(listener)
        self.assertEqual(broadcastGroup("bc", "10.0.0.1"), "bc-10-0-0-1")
        expected = [b"m%d" % i for i in range(10)]
        yield self.produce(broker, "t", 0, expected[:5])
        yield self.produce(broker, "t", 1, expected[5:])
        for listener in listeners:
            yield self.waitFor(lambda: len(listener.messages) >= 10)
            self.assertExactlyOnce(listener.payloads(), expected)

    @defer.inlineCallbacks
    def test_localRecoveryAcrossRestart(self):
        """
        A message the listener keeps failing on goes to local recovery and
        the partition moves on; after a restart the new listener gets it
        from the recovery store, once, and nothing else twice.
        """
        broker = yield self.startBroker(0, {"t": 1})
        expected = [b"m%d" % i for i in range(6)]
        yield self.produce(broker, "t", 0, expected)
        failing = Collector(failOn={b"m2"})
        config = self.config(maxFetchRetries=1, recoverMessageIntervalInMills=3600000)
        consumer = yield self.consumer(failing, config)
        yield self.waitFor(lambda: len(failing.messages) >= 5, what="the other messages")
        yield self.waitFor(lambda: consumer.recoverManager.pending("t", "grp") == 1)
        self.assertEqual(failing.payloads(), [b"m0", b"m1", b"m3", b"m4", b"m5"])
        yield consumer.shutdown()
        self.flushLoggedErrors(RuntimeError)

        healed = Collector()
        config = self.config(recoverMessageIntervalInMills=200)
        consumer = yield self.consumer(healed, config)
        consumer.recoverManager.firstDelay = 0
        yield consumer.recoverManager.replay()
        yield self.produce(broker, "t", 0, [b"m6"])
        yield self.waitFor(lambda: b"m6" in healed.payloads())
        self.assertExactlyOnce(healed.payloads(), [b"m2", b"m6"])
        self.assertEqual(consumer.recoverManager.pending("t", "grp"), 0)

    @defer.inlineCallbacks
    def test_brokerRestart(self):
        """
        The broker stops and comes back on the same port mid-consumption;
        the consumer reconnects and nothing is lost or repeated.
        """
        broker = yield self.startBroker(0)
        listener = Collector()
        yield self.consumer(listener)
        first = [b"a%d" % i for i in range(10)]
        yield self.produce(broker, "t", 0, first)
        yield self.waitFor(lambda: len(listener.messages) >= 10)
        yield broker.stop()
        yield sleep(0.5)
        yield broker.start()
        second = [b"b%d" % i for i in range(10)]
        yield self.produce(broker, "t", 0, second[:5])
        yield self.produce(broker, "t", 1, second[5:])
        yield self.waitFor(lambda: len(listener.messages) >= 20)
        yield sleep(0.5)
        self.assertExactlyOnce(listener.payloads(), first + second)

    @defer.inlineCallbacks
    def test_sessionExpiry(self):
        """
        The consumer's ZooKeeper session expires: it registers again, owns
        its partitions again and keeps consuming.
        """
        broker = yield self.startBroker(0)
        listener = Collector()
        zk = yield self.zookeeper()
        consumer = yield self.consumer(listener, zk=zk)
        yield self.produce(broker, "t", 0, [b"before"])
        yield self.waitFor(lambda: len(listener.messages) == 1)
        sessionId, password = zk.client_id
        thief = KazooClient(hosts=zookeeperAddress(), client_id=(sessionId, password),
                            logger=kazooLogger())
        yield threads.deferToThread(thief.start)
        yield threads.deferToThread(thief.stop)
        yield threads.deferToThread(thief.close)
        ownersPath = "%s/consumers/grp/owners/t" % (self.root,)

        def owners():
            return threads.deferToThread(
                lambda: sorted(self.zk.get(ownersPath + "/" + c)[0].decode()
                               for c in self.zk.get_children(ownersPath)))
        def cameBack():
            newSession = zk.client_id and zk.client_id[0] != sessionId
            if not (newSession and consumer.membership.rebalanceCount >= 2):
                return False
            return owners().addCallback(
                lambda found: found == [consumer.membership.consumerId] * 2)

        yield waitFor(cameBack, what="the consumer coming back with a new session")
        yield self.produce(broker, "t", 1, [b"after"])
        yield self.waitFor(lambda: len(listener.messages) == 2)
        self.assertExactlyOnce(listener.payloads(), [b"before", b"after"])


class BlockingConsumerTests(ConsumerIntegrationMixin, TestCase):
    """
    The blocking API, driven from a plain thread as a script would.
    """

    @defer.inlineCallbacks
    def test_blockingConsumer(self):
        yield self.startBroker(0)
        received = []
        threadNames = set()
        expected = [b"blocking-%d" % i for i in range(20)]

        def script():
            config = MetaClientConfig(zkConnect=zookeeperAddress(), zkRoot=self.root,
                                      recoverMessageIntervalInMills=3600000)
            factory = BlockingMessageSessionFactory(config)
            try:
                consumer = factory.createConsumer(self.config("blocking"))
                # A blocking listener: it runs in a thread of the consumer's
                # own, not the reactor's nor its pool (ZooKeeper's calls).
                consumer.subscribe("t", 1024 * 1024, lambda m: (time.sleep(0.001),
                                                                 threadNames.add(threading.current_thread().name),
                                                                 received.append(m.data)))
                consumer.completeSubscribe()
                owned = consumer.ownedPartitions()
                producer = factory.createProducer()
                producer.publish("t")
                for payload in expected:
                    self.assertTrue(producer.send(Message("t", payload)).success)
                deadline = time.monotonic() + 30
                while len(received) < len(expected) and time.monotonic() < deadline:
                    time.sleep(0.05)
                consumer.shutdown()
                browsed = [m.data for m in factory.createTopicBrowser("t")]
                self.assertEqual(sorted(browsed), sorted(expected))
                return owned
            finally:
                factory.close()
        owned = yield threads.deferToThread(script)
        self.assertEqual(owned, [("t", _p(0, 0)), ("t", _p(0, 1))])
        self.assertExactlyOnce(received, expected)
        self.assertTrue(threadNames)
        self.assertTrue(all("metaq-listeners-blocking" in name for name in threadNames), threadNames)

    @defer.inlineCallbacks
    def test_iterateAndRun(self):
        """
        A script iterates over a consumer and breaks out after what it
        wanted; the next consumer of the group starts after the messages
        the loop took.  Another one runs its listener until shut down from
        another thread (as Ctrl-C would).  Each shutdown removes the
        consumer's znode at once.
        """
        yield self.startBroker(0)
        ids = self.root + "/consumers/loop/ids"

        def script():
            config = MetaClientConfig(zkConnect=zookeeperAddress(), zkRoot=self.root,
                                      recoverMessageIntervalInMills=3600000)
            with BlockingMessageSessionFactory(config) as factory:
                producer = factory.createProducer()
                producer.publish("t")
                for i in range(6):
                    self.assertTrue(producer.send(Message("t", b"m%d" % (i,))).success)
                taken = []
                with factory.createConsumer(self.config("loop")) as consumer:
                    consumer.subscribe("t", 1024 * 1024)
                    consumer.completeSubscribe()
                    self.assertEqual(len(self.zk.get_children(ids)), 1)
                    for message in consumer:
                        taken.append(message.data)
                        if len(taken) == 4:
                            break
                self.assertEqual(self.zk.get_children(ids), [])
                rest = []
                consumer = factory.createConsumer(self.config("loop"))
                consumer.subscribe("t", 1024 * 1024, lambda m: rest.append(m.data))
                consumer.completeSubscribe()
                def stopWhenDone():
                    deadline = time.monotonic() + 30
                    while len(taken) + len(rest) < 6 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    consumer.shutdown()
                stopper = threading.Thread(target=stopWhenDone)
                stopper.start()
                consumer.run()
                stopper.join()
                self.assertEqual(self.zk.get_children(ids), [])
                return taken, rest
        taken, rest = yield threads.deferToThread(script)
        self.assertExactlyOnce(taken + rest, [b"m%d" % (i,) for i in range(6)])


class SessionFactoryTests(ConsumerIntegrationMixin, TestCase):
    @defer.inlineCallbacks
    def test_broadcastConsumers(self):
        """
        Broadcast consumers made by session factories on two hosts: groups
        C{<group>-<ip>}, offsets in local files, every message to each;
        the factory's close shuts them down (offsets written).
        """
        broker = yield self.startBroker(0)
        received = {}
        for host in ("10.1.2.3", "10.1.2.4"):
            factory = MetaMessageSessionFactory(
                MetaClientConfig(zkConnect=zookeeperAddress(), zkRoot=self.root), reactor)
            yield factory.start()
            self.addCleanup(factory.close)
            listener = received[host] = Collector()
            path = os.path.join(self.tmp, host + ".offsets")
            consumer = factory.createBroadcastConsumer(self.config("news"), path, host=host)
            self.assertEqual(consumer.group, "news-" + host.replace(".", "-"))
            consumer.subscribe("t", 1024 * 1024, listener)
            yield consumer.completeSubscribe()
        expected = [b"n%d" % i for i in range(8)]
        yield self.produce(broker, "t", 0, expected[:4])
        yield self.produce(broker, "t", 1, expected[4:])
        for listener in received.values():
            yield self.waitFor(lambda: len(listener.messages) >= 8)
            self.assertExactlyOnce(listener.payloads(), expected)
        yield factory.close()
        with open(path) as f:
            self.assertIn("news-10-1-2-4", f.read())


class TopicBrowserTests(ConsumerIntegrationMixin, TestCase):
    @defer.inlineCallbacks
    def test_browseEveryPartition(self):
        """
        The browser reads every master partition from offset 0, in
        partition order, without storing offsets; a message larger than
        maxSize ends its partition, as in Java.
        """
        broker = yield self.startBroker(0)
        yield self.produce(broker, "t", 0, [b"p0-%d" % i for i in range(30)])
        yield self.produce(broker, "t", 1, [b"p1-0", b"x" * 300, b"p1-2"])
        factory = MetaMessageSessionFactory(
            MetaClientConfig(zkConnect=zookeeperAddress(), zkRoot=self.root), reactor)
        yield factory.start()
        self.addCleanup(factory.close)
        browser = yield factory.createTopicBrowser("t", maxSize=200)

        async def browse():
            return [(str(m.partition), m.data) async for m in browser]
        seen = yield defer.ensureDeferred(browse())
        self.assertEqual(seen, [("0-0", b"p0-%d" % i) for i in range(30)] + [("0-1", b"p1-0")])
        # No group registration, no offsets.
        self.assertIsNone((yield threads.deferToThread(self.zk.exists, self.root + "/consumers")))


def _p(brokerId, partition):
    from metamorphosis.client.partition import Partition
    return Partition(brokerId, partition)


class OffsetStorageRestartMixin(ConsumerIntegrationMixin):
    """
    A consumer stops half way; a new one in the same group with the same
    offset storage starts where it stopped: nothing lost, nothing twice.
    """

    def storage(self):
        return None

    @defer.inlineCallbacks
    def test_survivesConsumerRestart(self):
        broker = yield self.startBroker(0)
        group = "g%s" % uuid.uuid4().hex[:8]
        first = [b"first-%d" % i for i in range(10)]
        yield self.produce(broker, "t", 0, first[:5])
        yield self.produce(broker, "t", 1, first[5:])
        before = Collector()
        consumer = yield self.consumer(before, self.config(group), offsetStorage=self.storage())
        yield self.waitFor(lambda: len(before.messages) >= 10)
        yield consumer.shutdown()
        second = [b"second-%d" % i for i in range(10)]
        yield self.produce(broker, "t", 0, second[:5])
        yield self.produce(broker, "t", 1, second[5:])
        after = Collector()
        yield self.consumer(after, self.config(group), offsetStorage=self.storage())
        yield self.waitFor(lambda: len(after.messages) >= 10)
        yield sleep(0.5)
        self.assertExactlyOnce(before.payloads(), first)
        self.assertExactlyOnce(after.payloads(), second)


class ZooKeeperOffsetsRestartTests(OffsetStorageRestartMixin, TestCase):
    pass


class LocalOffsetsRestartTests(OffsetStorageRestartMixin, TestCase):
    def storage(self):
        return LocalOffsetStorage(os.path.join(self.tmp, "offsets.json"))


class SQLiteOffsetsRestartTests(OffsetStorageRestartMixin, TestCase):
    def storage(self):
        return SQLOffsetStorage.fromURL("sqlite:///" + os.path.join(self.tmp, "offsets.db"))


class ServerOffsetsRestartMixin(OffsetStorageRestartMixin):
    @defer.inlineCallbacks
    def setUp(self):
        self.table = self.server.scratchTable(self, "consumer_it_")
        yield ConsumerIntegrationMixin.setUp(self)

    def storage(self):
        return SQLOffsetStorage.fromURL(self.server.url, table=self.table)


class MariaDBOffsetsRestartTests(ServerOffsetsRestartMixin, TestCase):
    server = MARIADB


class PostgreSQLOffsetsRestartTests(ServerOffsetsRestartMixin, TestCase):
    server = POSTGRESQL
