"""
Errors a user can act on, and the deprecated ways of making consumers.
"""

import socket
import warnings

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.client import blockingconsumer, browser, consumer
from metamorphosis.client.consumer import ConsumerConfig
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory


def closedPort():
    """
    A loopback port nothing listens on (bound, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MessageDataTests(SynchronousTestCase):
    def test_textRefused(self):
        """
        A C{str} payload is refused at once with a TypeError that says data
        must be bytes and how to make them.
        """
        error = self.assertRaises(TypeError, Message, "test", "hello")
        self.assertIn("data must be bytes, not str", str(error))
        self.assertIn("'hello'.encode('utf-8')", str(error))
        self.assertEqual(Message("test", b"hello").data, b"hello")
        self.assertEqual(Message("test", bytearray(b"x")).data, bytearray(b"x"))


class NoZooKeeperTests(TestCase):
    timeout = 60

    async def test_namesAddressAndTimeout(self):
        """
        Starting a session factory with no ZooKeeper at C{zkConnect} fails
        with a L{MetaClientError} that names the address and the timeout.
        """
        address = "127.0.0.1:%d" % (closedPort(),)
        factory = MetaMessageSessionFactory(
            MetaClientConfig(zkConnect=address, zkConnectionTimeoutMs=500), reactor)
        self.addCleanup(factory.close)
        try:
            await factory.start()
        except MetaClientError as e:
            self.assertIn(address, str(e))
            self.assertIn("within 0.5 s (zkConnectionTimeoutMs)", str(e))
        else:
            self.fail("the factory started without ZooKeeper")


class Factory:
    """
    Records what the deprecated functions ask of a factory.
    """

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name,) + args) or name


class DeprecatedTests(SynchronousTestCase):
    def test_freeFunctions(self):
        """
        The free functions of the previous release still work, through the
        factory's methods, and warn.
        """
        config = ConsumerConfig("g")
        cases = [
            (consumer.createConsumer, (config,), "createConsumer", (config, None, None)),
            (consumer.createBroadcastConsumer, (config,), "createBroadcastConsumer", (config, None, None, None)),
            (browser.createTopicBrowser, ("t",), "createTopicBrowser", ("t", 1024 * 1024, 5.0)),
            (blockingconsumer.createBlockingConsumer, (config,), "createConsumer", (config, None)),
            (blockingconsumer.createBlockingBroadcastConsumer, (config,), "createBroadcastConsumer",
             (config, None)),
            (blockingconsumer.createBlockingTopicBrowser, ("t",), "createTopicBrowser",
             ("t", 1024 * 1024, 5.0)),
        ]
        for function, arguments, method, passed in cases:
            factory = Factory()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.assertEqual(function(factory, *arguments), method)
            self.assertEqual(factory.calls, [(method,) + passed])
            self.assertEqual([w.category for w in caught], [DeprecationWarning], function)
            self.assertIn("factory.%s(" % (method,), str(caught[0].message))
