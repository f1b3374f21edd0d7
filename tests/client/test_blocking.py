"""
Tests for L{metamorphosis.client.blocking}: in-process from a worker thread
(the reactor is trial's), and as a script in a child process whose reactor
runs in the background thread.
"""

import os
import sys

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from metamorphosis.client.blocking import (
    BlockingMessageSessionFactory,
    ReactorThread,
)
from metamorphosis.client.errors import MetaClientError, MetaTimeoutError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig

from .fakebroker import FakeBroker


class ReactorThreadTests(TestCase):
    @defer.inlineCallbacks
    def test_callFromReactorThreadRefused(self):
        """
        A blocking call from the reactor thread would deadlock: it is refused.
        """
        yield deferLater(reactor, 0, lambda: None)
        self.assertRaises(RuntimeError, ReactorThread(reactor).call, lambda: None)

    @defer.inlineCallbacks
    def test_callResults(self):
        thread = ReactorThread(reactor)

        def blocking():
            value = thread.call(lambda x: defer.succeed(x + 1), 1)
            try:
                thread.call(lambda: defer.fail(MetaTimeoutError("slow")))
            except MetaTimeoutError as e:
                error = str(e)
            try:
                thread.call(lambda: defer.Deferred(), timeout=0.1)
            except TimeoutError:
                timedOut = True
            return value, error, timedOut

        result = yield threads.deferToThread(blocking)
        self.assertEqual(result, (2, "slow", True))


class BlockingProducerTests(TestCase):
    @defer.inlineCallbacks
    def test_send(self):
        """
        A blocking producer's send returns the SendResult; errors are raised.
        """
        broker = FakeBroker(partitions=2).listen()
        self.addCleanup(broker.stop)
        config = MetaClientConfig(
            serverUrl=broker.url,
            partitions={"t": 2},
            localMessagePath=self.mktemp(),
            asyncStoragePath=self.mktemp(),
        )
        thread = ReactorThread(reactor)

        def script():
            with BlockingMessageSessionFactory(config, thread) as factory:
                producer = factory.createProducer()
                producer.publish("t")
                results = [producer.send(Message("t", b"%d" % i)) for i in range(3)]
                try:
                    producer.send(Message("unpublished", b"x"))
                except MetaClientError:
                    refused = True
                asyncProducer = factory.createAsyncProducer()
                asyncProducer.publish("t")
                for i in range(50):
                    asyncProducer.sendAsync(Message("t", b"async"))
                asyncProducer.flush()
            return results, refused

        results, refused = yield threads.deferToThread(script)
        self.assertEqual([r.partition.partition for r in results], [1, 0, 1])
        self.assertTrue(all(r.success for r in results))
        self.assertTrue(refused)
        self.assertEqual(broker.payloads().count(b"async"), 50)


SCRIPT = """
import sys
from metamorphosis.client.blocking import BlockingMessageSessionFactory
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig

config = MetaClientConfig(serverUrl=sys.argv[1], partitions={"t": 2},
                          localMessagePath=sys.argv[2], asyncStoragePath=sys.argv[2])
factory = BlockingMessageSessionFactory(config)
producer = factory.createProducer()
producer.publish("t")
for i in range(5):
    result = producer.send(Message("t", b"script-%d" % i))
    print(result.success, result.partition, result.offset)
factory.close()
"""


class ScriptTests(TestCase):
    @defer.inlineCallbacks
    def test_script(self):
        """
        A plain script (no reactor of its own) sends through the blocking API
        and exits normally.
        """
        broker = FakeBroker(partitions=2).listen()
        self.addCleanup(broker.stop)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", SCRIPT, broker.url, self.mktemp()],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "True 0-1 0")
        self.assertEqual(len(lines), 5)
        self.assertEqual(broker.payloads(), [b"script-%d" % i for i in range(5)])
