"""
Tests for L{metamorphosis.client.discovery} and producing through it,
against a real ZooKeeper (the znodes written here are the ones a broker
registers, docs/zookeeper.md) and in-process fake brokers.
"""

import json

from kazoo.client import KazooClient
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from metamorphosis.client.discovery import StaticDiscovery, ZooKeeperDiscovery
from metamorphosis.client.interfaces import IBrokerDiscovery
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory

from ..zookeeper import uniqueRoot, zookeeperAddress
from .fakebroker import FakeBroker
from .test_producer import eventually


def inThread(function, *args, **kwargs):
    return threads.deferToThread(function, *args, **kwargs)


class ZooKeeperTestsMixin:
    @defer.inlineCallbacks
    def setUp(self):
        self.address = zookeeperAddress()
        self.root = uniqueRoot("producer")
        self.zk = KazooClient(hosts=self.address)
        yield inThread(self.zk.start, 10)
        self.addCleanup(inThread, self.zk.stop)

    def register(self, brokerId, url, topic, numParts, master=True):
        """
        Register a broker and one topic as a master broker does.
        """

        def write():
            ids = "%s/brokers/ids/%d" % (self.root, brokerId)
            self.zk.ensure_path(ids)
            if master:
                self.zk.create(ids + "/master", url.encode(), ephemeral=True)
            self.zk.create(
                "%s/brokers/topics-pub/%s/%d-m" % (self.root, topic, brokerId),
                json.dumps({"numParts": numParts, "broker": "%d-m" % brokerId}).encode(),
                ephemeral=True,
                makepath=True,
            )

        return inThread(write)

    def unregister(self, brokerId, topic):
        def delete():
            self.zk.delete("%s/brokers/topics-pub/%s/%d-m" % (self.root, topic, brokerId))
            self.zk.delete("%s/brokers/ids/%d/master" % (self.root, brokerId))

        return inThread(delete)


class ZooKeeperDiscoveryTests(ZooKeeperTestsMixin, TestCase):
    def discovery(self):
        discovery = ZooKeeperDiscovery(self.zk, self.root, reactor)
        self.addCleanup(discovery.stop)
        verifyObject(IBrokerDiscovery, discovery)
        return discovery

    @defer.inlineCallbacks
    def test_partitionsSortedNumerically(self):
        """
        Partitions of every master broker, sorted by (broker id, partition)
        as numbers (broker 10 after broker 2).
        """
        yield self.register(10, "meta://127.0.0.1:10", "t", 2)
        yield self.register(2, "meta://127.0.0.1:2", "t", 3)
        discovery = self.discovery()
        yield discovery.publish("t")
        self.assertEqual(
            list(discovery.partitionsFor("t")),
            [Partition(2, 0), Partition(2, 1), Partition(2, 2), Partition(10, 0), Partition(10, 1)],
        )
        self.assertEqual(discovery.brokerUrlFor("t", Partition(10, 1)), "meta://127.0.0.1:10")
        self.assertEqual(discovery.brokerUrls("t"), {"meta://127.0.0.1:10", "meta://127.0.0.1:2"})
        self.assertIsNone(discovery.partitionsFor("other"))

    @defer.inlineCallbacks
    def test_createsTopicPathWithoutData(self):
        """
        Publishing a topic no broker has registered yet creates its
        topics-pub node (and parents) with null data, as zkclient does.
        """
        discovery = self.discovery()
        yield discovery.publish("fresh")
        self.assertEqual(list(discovery.partitionsFor("fresh")), [])
        data, stat = yield inThread(self.zk.get, "%s/brokers/topics-pub/fresh" % self.root)
        self.assertIsNone(data)
        data, stat = yield inThread(self.zk.get, "%s/brokers" % self.root)
        self.assertIsNone(data)

    @defer.inlineCallbacks
    def test_concurrentPublishes(self):
        """
        Several publishes of one topic while its first read runs each get a
        Deferred of their own, all fired once it is known.
        """
        yield self.register(0, "meta://127.0.0.1:1", "t", 2)
        discovery = self.discovery()
        results = yield defer.gatherResults([discovery.publish("t") for _ in range(3)])
        self.assertEqual(results, [None, None, None])
        self.assertEqual(len(discovery.partitionsFor("t")), 2)
        self.assertIsNone((yield discovery.publish("t")))

    @defer.inlineCallbacks
    def test_publishFailure(self):
        """
        A first read that fails fails every waiting publish, and the topic
        is not followed (a later publish tries again).
        """

        def broken(*args, **kwargs):
            raise RuntimeError("no ZooKeeper")

        discovery = self.discovery()
        discovery._read = broken
        first, second = discovery.publish("t"), discovery.publish("t")
        for d in (first, second):
            yield self.assertFailure(d, RuntimeError)
        self.assertIsNone(discovery.partitionsFor("t"))
        del discovery._read
        yield self.register(0, "meta://127.0.0.1:1", "t", 1)
        yield discovery.publish("t")
        self.assertEqual(list(discovery.partitionsFor("t")), [Partition(0, 0)])

    @defer.inlineCallbacks
    def test_ignoresSlavesAndBrokersWithoutMaster(self):
        yield self.register(0, "meta://127.0.0.1:1", "t", 1)
        yield self.register(1, "", "t", 4, master=False)

        def slave():
            self.zk.create(
                "%s/brokers/topics-pub/t/0-s1" % self.root,
                b'{"numParts":1,"broker":"0-s1"}',
                ephemeral=True,
            )
            self.zk.create("%s/brokers/topics-pub/t/5-m" % self.root, b"not json", ephemeral=True)
            self.zk.create("%s/brokers/topics-pub/t/6-m" % self.root, None, ephemeral=True)
            self.zk.create("%s/brokers/topics-pub/t/7-m" % self.root, b'{"broker":"7-m"}', ephemeral=True)

        yield inThread(slave)
        discovery = self.discovery()
        yield discovery.publish("t")
        self.assertEqual(list(discovery.partitionsFor("t")), [Partition(0, 0)])

    @defer.inlineCallbacks
    def test_followsChanges(self):
        """
        Brokers appearing and disappearing are followed through watches and
        reported to the listeners.
        """
        discovery = self.discovery()
        changes = []
        discovery.addListener(changes.append)
        yield discovery.publish("t")
        self.assertEqual(list(discovery.partitionsFor("t")), [])
        yield self.register(0, "meta://127.0.0.1:1", "t", 2)
        yield eventually(lambda: len(discovery.partitionsFor("t")) == 2)
        yield self.register(1, "meta://127.0.0.1:2", "t", 1)
        yield eventually(lambda: len(discovery.partitionsFor("t")) == 3)
        yield self.unregister(0, "t")
        yield eventually(lambda: list(discovery.partitionsFor("t")) == [Partition(1, 0)])
        self.assertEqual(discovery.brokerUrls("t"), {"meta://127.0.0.1:2"})
        self.assertIn("t", changes)
        self.assertGreaterEqual(len(changes), 4)

    @defer.inlineCallbacks
    def test_masterAddressChange(self):
        """
        A broker re-registering under a new address is followed.
        """
        yield self.register(0, "meta://127.0.0.1:1", "t", 1)
        discovery = self.discovery()
        yield discovery.publish("t")

        def move():
            self.zk.set("%s/brokers/ids/0/master" % self.root, b"meta://127.0.0.1:9")

        yield inThread(move)
        yield eventually(lambda: discovery.brokerUrls("t") == {"meta://127.0.0.1:9"})


class StaticDiscoveryTests(TestCase):
    def test_partitionMap(self):
        discovery = StaticDiscovery("meta://127.0.0.1:1", {"t": 2})
        verifyObject(IBrokerDiscovery, discovery)
        self.assertIsNone(discovery.partitionsFor("t"))
        discovery.publish("t")
        discovery.publish("u")
        self.assertEqual(list(discovery.partitionsFor("t")), [Partition(0, 0), Partition(0, 1)])
        self.assertEqual(list(discovery.partitionsFor("u")), [Partition(0, -1)])
        self.assertEqual(discovery.brokerUrlFor("u", Partition(0, -1)), "meta://127.0.0.1:1")


class ProduceWithDiscoveryTests(ZooKeeperTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_twoBrokers(self):
        """
        A producer discovers two brokers in ZooKeeper and spreads messages
        round-robin over all their partitions; when one broker goes away its
        partitions are no longer used, and when it returns they are again.
        """
        brokers = [FakeBroker(0, 2).listen(), FakeBroker(1, 3).listen()]
        for broker in brokers:
            self.addCleanup(broker.stop)
        yield self.register(0, brokers[0].url, "t", 2)
        yield self.register(1, brokers[1].url, "t", 3)
        factory = MetaMessageSessionFactory(
            MetaClientConfig(zkConnect=self.address, zkRoot=self.root), reactor
        )
        self.addCleanup(factory.close)
        yield factory.start()
        producer = factory.createProducer()
        yield producer.publish("t")
        results = []
        for i in range(10):
            results.append((yield producer.sendMessage(Message("t", b"%d" % i))))
        self.assertTrue(all(r.success for r in results))
        order = [Partition(0, 0), Partition(0, 1), Partition(1, 0), Partition(1, 1), Partition(1, 2)]
        self.assertEqual([r.partition for r in results], [order[(i + 1) % 5] for i in range(10)])
        self.assertEqual(len(brokers[0].stored), 4)
        self.assertEqual(len(brokers[1].stored), 6)

        yield self.unregister(1, "t")
        yield eventually(lambda: factory.connections.get(brokers[1].url) is None)
        for i in range(4):
            result = yield producer.sendMessage(Message("t", b"only-0"))
            self.assertEqual(result.partition.brokerId, 0)
        self.assertEqual(len(brokers[0].stored), 8)

        yield self.register(1, brokers[1].url, "t", 3)
        # The producer leaves out the partitions of a broker it has no
        # connection up to yet, so wait for the connection as well.
        yield eventually(
            lambda: len(factory.discovery.partitionsFor("t")) == 5
            and getattr(factory.connections.get(brokers[1].url), "connected", False)
        )
        sent = []
        for i in range(5):
            sent.append((yield producer.sendMessage(Message("t", b"again"))).partition)
        self.assertEqual(sorted(sent), order)


class SessionExpiryTests(ZooKeeperTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_followsChangesAfterExpiry(self):
        """
        Watches die with an expired session; after kazoo's new session the
        topics are read again and watched again.
        """
        yield self.register(0, "meta://127.0.0.1:1", "t", 1)
        client = KazooClient(hosts=self.address, timeout=4)
        yield inThread(client.start, 10)
        self.addCleanup(inThread, client.stop)
        discovery = ZooKeeperDiscovery(client, self.root, reactor)
        self.addCleanup(discovery.stop)
        yield discovery.publish("t")
        self.assertEqual(list(discovery.partitionsFor("t")), [Partition(0, 0)])

        def expire():
            # The usual trick: a second client on the same session, closed,
            # makes the server expire it.
            sessionId, password = client.client_id
            other = KazooClient(hosts=self.address, client_id=(sessionId, password))
            other.start(10)
            other.stop()
            other.close()

        yield inThread(expire)
        yield eventually(lambda: discovery._sessionLost, timeout=20)
        yield eventually(lambda: not discovery._sessionLost, timeout=20)
        yield self.register(1, "meta://127.0.0.1:2", "t", 2)
        yield eventually(lambda: len(discovery.partitionsFor("t")) == 3, timeout=10)
