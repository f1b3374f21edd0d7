"""
Tests for L{metamorphosis.client.transaction}: local transactions and the XA
resource against a real broker in this process, from Twisted and from the
blocking API.
"""

import os
import socket

from twisted.internet import defer, endpoints, reactor, threads
from twisted.trial.unittest import TestCase

from metamorphosis.broker.config import standaloneConfig
from metamorphosis.broker.service import BrokerService
from metamorphosis.client.blocking import BlockingMessageSessionFactory, ReactorThread
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.client.transaction import HOSTNAME_VARIABLE, XAMessageProducer, Xid
from metamorphosis.protocol.xa import (
    TMNOFLAGS,
    TMSUCCESS,
    XA_OK,
    XA_RDONLY,
    XAER_DUPID,
    XAER_NOTA,
    XAER_PROTO,
    XAException,
)

TOPIC = "orders"


class TransactionClientTests(TestCase):
    async def startBroker(self):
        config = standaloneConfig(os.path.relpath(self.mktemp()))
        config.hostName = "127.0.0.1"
        config.unflushThreshold = 0
        self.broker = BrokerService(
            config, endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), reactor
        )
        self.broker.startService()
        self.addCleanup(self.broker.stopService)
        port = await self.broker.started
        self.url = "meta://127.0.0.1:%d" % (port.getHost().port,)

    def clientConfig(self):
        return MetaClientConfig(
            serverUrl=self.url,
            partitions={TOPIC: 1},
            localMessagePath=self.mktemp(),
            asyncStoragePath=self.mktemp(),
        )

    async def startClient(self):
        await self.startBroker()
        self.factory = MetaMessageSessionFactory(self.clientConfig(), reactor)
        self.addCleanup(self.factory.close)
        await self.factory.start()

    async def visible(self):
        """
        The messages a consumer gets: committed ones once their partition
        is flushed (a get flushes it).
        """
        store = self.broker.storeManager.getStore(TOPIC, 0)
        if store is not None:
            await store.flush()
        if store is None or store.maxOffset == 0:
            return []
        from metamorphosis.protocol.records import decodeRecords

        return [r.data for r in decodeRecords(store.slice(0, 1 << 20).read())[0]]

    def runAsync(self, f):
        return defer.ensureDeferred(f())

    def test_localCommit(self):
        """
        Messages sent in a local transaction are answered with offset -1 and
        appear, in order, only at the commit.
        """
        async def go():
            await self.startClient()
            producer = self.factory.createProducer()
            await producer.publish(TOPIC)
            producer.beginTransaction()
            first = await producer.sendMessage(Message(TOPIC, b"one"))
            second = await producer.sendMessage(Message(TOPIC, b"two"))
            self.assertTrue(first.success and second.success)
            self.assertEqual((first.offset, second.offset), (-1, -1))
            self.assertEqual(await self.visible(), [])
            await producer.commit()
            self.assertEqual(await self.visible(), [b"one", b"two"])
            # Outside a transaction, puts are plain again.
            plain = await producer.sendMessage(Message(TOPIC, b"three"))
            self.assertNotEqual(plain.offset, -1)
            self.assertEqual(self.broker.stats.txCommit, 1)

        return self.runAsync(go)

    def test_localRollback(self):
        async def go():
            await self.startClient()
            producer = self.factory.createProducer()
            await producer.publish(TOPIC)
            producer.beginTransaction()
            await producer.sendMessage(Message(TOPIC, b"never"))
            await producer.rollback()
            self.assertEqual(await self.visible(), [])
            producer.beginTransaction()
            await producer.sendMessage(Message(TOPIC, b"later"))
            await producer.commit()
            self.assertEqual(await self.visible(), [b"later"])

        return self.runAsync(go)

    def test_commitWithoutMessages(self):
        """
        Committing a transaction in which nothing was sent fails without
        sending anything, as in Java.
        """
        async def go():
            await self.startClient()
            producer = self.factory.createProducer()
            await producer.publish(TOPIC)
            producer.beginTransaction()
            with self.assertRaises(MetaClientError) as caught:
                await producer.commit()
            self.assertEqual(str(caught.exception), "No transaction is started")
            self.assertEqual(self.broker.stats.txBegin, 0)

        return self.runAsync(go)

    def test_xaTwoPhase(self):
        """
        start, send, end, prepare (XA_OK), recover lists the branch, commit.
        """
        async def go():
            await self.startClient()
            producer = self.factory.createXAProducer(uniqueQualifier="tests")
            await producer.publish(TOPIC)
            resource = producer.getXAResource()
            xid = Xid(1, b"gtrid", b"b")
            await resource.start(xid, TMNOFLAGS)
            with self.assertRaises(XAException) as caught:
                await resource.start(Xid(1, b"other", b"b"), TMNOFLAGS)
            self.assertEqual(caught.exception.code, XAER_DUPID)
            result = await producer.sendMessage(Message(TOPIC, b"paid"))
            self.assertEqual(result.offset, -1)
            await resource.end(xid, TMSUCCESS)
            self.assertEqual(await resource.prepare(xid), XA_OK)
            self.assertEqual(await resource.recover(), [xid])
            self.assertEqual(await self.visible(), [])
            await resource.commit(xid, False)
            self.assertEqual(await self.visible(), [b"paid"])
            self.assertEqual(await resource.recover(), [])

        return self.runAsync(go)

    def test_xaErrors(self):
        """
        The broker's XA errors reach the transaction manager with their
        codes.
        """
        async def go():
            await self.startClient()
            producer = self.factory.createXAProducer(uniqueQualifier="tests")
            await producer.publish(TOPIC)
            resource = producer.getXAResource()
            with self.assertRaises(XAException) as caught:
                await resource.commit(Xid(1, b"unknown", b""), False)
            self.assertEqual(caught.exception.code, XAER_NOTA)
            self.assertEqual(
                caught.exception.message,
                "XA transaction 'XID:1:756e6b6e6f776e::tests' has not been started.",
            )
            xid = Xid(7, b"g", b"b")
            await resource.start(xid)
            await producer.sendMessage(Message(TOPIC, b"x"))
            await resource.end(xid, TMSUCCESS)
            with self.assertRaises(XAException) as caught:
                await resource.commit(xid, False)
            self.assertEqual(caught.exception.code, XAER_PROTO)
            await resource.rollback(xid)
            empty = Xid(7, b"empty", b"b")
            await resource.start(empty)
            await resource.end(empty, TMSUCCESS)
            self.assertEqual(await resource.prepare(empty), XA_RDONLY)
            self.assertEqual(await self.visible(), [])

        return self.runAsync(go)

    def test_blocking(self):
        """
        The blocking API: a local transaction and an XA branch from a plain
        thread.
        """
        async def go():
            await self.startBroker()
            thread = ReactorThread(reactor)

            def blocking():
                factory = BlockingMessageSessionFactory(self.clientConfig(), thread)
                try:
                    producer = factory.createProducer()
                    producer.publish(TOPIC)
                    producer.beginTransaction()
                    producer.send(Message(TOPIC, b"local"))
                    producer.commit()
                    xaProducer = factory.createXAProducer(uniqueQualifier="blocking")
                    xaProducer.publish(TOPIC)
                    resource = xaProducer.getXAResource()
                    xid = Xid(1, b"blocking", b"1")
                    resource.start(xid, TMNOFLAGS)
                    xaProducer.send(Message(TOPIC, b"xa"))
                    resource.end(xid, TMSUCCESS)
                    vote = resource.prepare(xid)
                    recovered = resource.recover()
                    resource.commit(xid, False)
                    return vote, recovered
                finally:
                    factory.close()

            vote, recovered = await threads.deferToThread(blocking)
            self.assertEqual((vote, recovered), (XA_OK, [Xid(1, b"blocking", b"1")]))
            self.assertEqual(await self.visible(), [b"local", b"xa"])

        return self.runAsync(go)


class UniqueQualifierTests(TestCase):
    """
    The XA producer's resource name, as Java's C{SimpleXAMessageProducer}.
    """

    def producer(self, **kwargs):
        factory = type("Factory", (), {})()
        return XAMessageProducer(factory, **kwargs)

    def test_default(self):
        self.patch(os, "environ", {HOSTNAME_VARIABLE: "host-a"})
        self.assertEqual(self.producer().uniqueQualifier, "XAMessageProducer-host-a")

    def test_prefixAndExplicit(self):
        self.patch(os, "environ", {})
        producer = self.producer(uniqueQualifier="orders")
        self.assertEqual(producer.uniqueQualifier, "orders")
        producer.setUniqueQualifierPrefix("svc")
        self.assertEqual(producer.uniqueQualifier, "svc-" + socket.gethostname())

    def test_invalid(self):
        producer = self.producer()
        for bad in ("", "  ", "a b", "a:b", "a\tb", "a\r\nb"):
            self.assertRaises(ValueError, producer.setUniqueQualifier, bad)
