"""
A MetaQ cluster on loopback for the cluster tests: broker processes
(C{twistd -n metaq}) with the same topics registered in one ZooKeeper root,
Python producers sending under load that retry every failed send, and a
consumer group whose members each have a session factory (ZooKeeper
session and broker connections) of their own, as separate processes would.

Every payload a producer sends is unique, so the test can tell, at the end,
which acknowledged messages were consumed and how many were consumed more
than once.
"""

import collections
import os
import time

from kazoo.exceptions import NoNodeError
from twisted.internet import defer, reactor, task, threads

from metamorphosis.client.consumer import ConsumerConfig
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from tests.ha.processes import Broker, serverIni
from tests.waiting import waitFor


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def clientConfig(zkConnect, root):
    """
    Client settings with short ZooKeeper timeouts, as the brokers have.
    """
    return MetaClientConfig(zkConnect=zkConnect, zkRoot=root, zkSessionTimeoutMs=4000,
                            zkConnectionTimeoutMs=10000, reconnectIntervalInMills=500)


class ClusterBroker(Broker):
    """
    A broker process of the cluster, with its id and URL.
    """

    def __init__(self, testCase, brokerId, zkConnect, root, topics):
        Broker.__init__(self, testCase, "broker %d" % (brokerId,),
                        serverIni(brokerId, topics=topics, zkConnect=zkConnect, zkRoot=root))
        self.brokerId = brokerId

    @property
    def url(self):
        return "meta://127.0.0.1:%d" % (self.port,)


class LoadProducer:
    """
    One producer sending unique payloads from C{senders} loops at once (so
    that sends are in flight when a broker dies), each loop sending one
    message after the other with C{pause} seconds between two.  A send that
    fails (a failed result or an exception) is recorded and the same payload
    sent again until a broker stores it: nothing is dropped, and a payload
    whose send failed after the broker stored it is stored twice.

    @ivar acked: payload -> the partition that acknowledged it.
    @ivar ackTimes: C{(time, partition)} of every acknowledgement.
    @ivar failures: C{(time, error text)} of every failed attempt.
    @ivar retried: the payloads sent more than once.
    """

    def __init__(self, name, factory, topic, senders=4, pause=0.01):
        self.name = name
        self.factory = factory
        self.topic = topic
        self.senders = senders
        self.pause = pause
        self.producer = factory.createProducer()
        self.acked = {}
        self.ackTimes = []
        self.failures = []
        self.retried = set()
        self._sequence = 0
        self._stopping = False
        self._loops = None

    async def start(self):
        await self.producer.publish(self.topic)
        self._loops = defer.gatherResults(
            [defer.ensureDeferred(self._run()) for _ in range(self.senders)], consumeErrors=True)

    def stop(self):
        self._stopping = True
        return self._loops

    async def _run(self):
        while not self._stopping:
            self._sequence += 1
            payload = b"%s-%d" % (self.name.encode(), self._sequence)
            while True:
                try:
                    result = await self.producer.sendMessage(Message(self.topic, payload), timeout=3.0)
                except MetaClientError as e:
                    error = "%s: %s" % (type(e).__name__, e)
                else:
                    if result.success:
                        self.acked[payload] = result.partition
                        self.ackTimes.append((time.monotonic(), result.partition))
                        break
                    error = "refused: %s" % (result.errorMessage,)
                self.failures.append((time.monotonic(), error))
                self.retried.add(payload)
                await sleep(0.05)
            await sleep(self.pause)

    def failuresSince(self, since):
        return [(t, e) for t, e in self.failures if t >= since]

    def ackedBy(self, brokerId, since=0):
        return sum(1 for t, p in self.ackTimes if t >= since and p.brokerId == brokerId)


def readNode(zookeeper, path):
    """
    The data of C{path} (L{None} when absent), read in a thread through a
    started kazoo client.
    """
    def read():
        try:
            return zookeeper.get(path)[0]
        except NoNodeError:
            return None

    return threads.deferToThread(read)


class Group:
    """
    A consumer group whose members count every payload they receive.
    """

    def __init__(self, testCase, zkConnect, root, topic, name="cluster-group", members=3):
        self.testCase = testCase
        self.zkConnect = zkConnect
        self.root = root
        self.topic = topic
        self.name = name
        self.size = members
        self.received = collections.Counter()
        self.consumers = []

    def _receive(self, message):
        self.received[message.data] += 1

    async def start(self):
        for member in range(self.size):
            await self.addMember(member)

    async def addMember(self, member):
        factory = MetaMessageSessionFactory(clientConfig(self.zkConnect, self.root), reactor)
        await factory.start()
        self.testCase.addCleanup(factory.close)
        recoverPath = os.path.abspath(self.testCase.mktemp())
        config = ConsumerConfig(self.name, consumerId="member%d" % (member,),
                                maxDelayFetchTimeInMills=200, commitOffsetPeriodInMills=500,
                                zkSyncTimeMs=200, fetchTimeoutInMills=5000,
                                recoverPath=recoverPath)
        consumer = factory.createConsumer(config)
        consumer.subscribe(self.topic, 1024 * 1024, self._receive)
        await consumer.completeSubscribe()
        self.consumers.append(consumer)
        return consumer

    def owned(self):
        """
        Each member's partitions.
        """
        return [{p for _, p in consumer.ownedPartitions()} for consumer in self.consumers]

    def balancedOver(self, partitions):
        """
        Whether the members together own exactly C{partitions}, each once,
        and each member some.
        """
        owned = self.owned()
        union = set().union(*owned)
        return (union == set(partitions) and sum(map(len, owned)) == len(union)
                and all(owned))

    def missing(self, payloads):
        return [p for p in payloads if p not in self.received]

    def duplicates(self, among=None):
        """
        How many deliveries were repeats (of the payloads C{among}, by
        default of all).
        """
        return sum(count - 1 for payload, count in self.received.items()
                   if count > 1 and (among is None or payload in among))


class Cluster:
    """
    Brokers 0..n-1 carrying the same topics, registered under C{root}.
    """

    def __init__(self, testCase, zkConnect, root, topics=(("cluster", 3),), brokers=3):
        self.testCase = testCase
        self.zkConnect = zkConnect
        self.root = root
        self.topics = topics
        self.brokers = [ClusterBroker(testCase, brokerId, zkConnect, root, topics)
                        for brokerId in range(brokers)]
        self.factory = None

    async def start(self):
        for broker in self.brokers:
            await broker.start()
        # A factory of the test itself: stats, and the view producers have.
        self.factory = MetaMessageSessionFactory(clientConfig(self.zkConnect, self.root), reactor)
        await self.factory.start()
        self.testCase.addCleanup(self.factory.close)

    def partitions(self, brokers=None):
        """
        The partitions of C{brokers} (default: every broker) of the first
        topic.
        """
        topic, count = self.topics[0]
        return [Partition(b.brokerId, n) for b in (brokers or self.brokers) for n in range(count)]

    async def producer(self, name, **kw):
        factory = MetaMessageSessionFactory(clientConfig(self.zkConnect, self.root), reactor)
        await factory.start()
        self.testCase.addCleanup(factory.close)
        producer = LoadProducer(name, factory, self.topics[0][0], **kw)
        await producer.start()
        return producer

    def seen(self, producer):
        """
        The partitions C{producer} would send to now.
        """
        return set(producer.factory.discovery.partitionsFor(producer.topic) or ())

    async def stats(self, broker):
        return await self.factory.getStats(broker.url, "zookeeper")

    async def waitSeen(self, producers, partitions, timeout=60.0, what="partitions"):
        await waitFor(lambda: all(self.seen(p) == set(partitions) for p in producers),
                      timeout=timeout, what=what)


async def waitAllConsumed(group, producers, timeout=90.0):
    """
    Wait until the group has received every acknowledged payload.

    @return: the acknowledged payloads.
    """
    acked = {}
    for producer in producers:
        acked.update(producer.acked)

    def done():
        return not group.missing(acked)

    try:
        await waitFor(done, timeout=timeout, what="all acknowledged messages consumed")
    except AssertionError:
        missing = group.missing(acked)
        raise AssertionError("%d of %d acknowledged messages never consumed, e.g. %r" % (
            len(missing), len(acked), [(m, str(acked[m])) for m in missing[:10]]))
    return acked
