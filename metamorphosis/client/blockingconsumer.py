"""
A blocking consumer for scripts and programs that do not run a reactor.

The consumer itself lives in the reactor thread of
L{metamorphosis.client.blocking}; listeners written as plain blocking
code run in the reactor's thread pool (as Java listeners run in their
executor), one message at a time per partition, so they may block without
stalling the reactor::

    from metamorphosis.client.blocking import BlockingMessageSessionFactory
    from metamorphosis.client.blockingconsumer import createBlockingConsumer
    from metamorphosis.client.consumer import ConsumerConfig
    from metamorphosis.client.session import MetaClientConfig

    factory = BlockingMessageSessionFactory(MetaClientConfig(zkConnect="127.0.0.1:2181"))
    consumer = createBlockingConsumer(factory, ConsumerConfig("my-group"))
    consumer.subscribe("test", 1024 * 1024, lambda message: print(message.data))
    consumer.completeSubscribe()

    for message in createBlockingTopicBrowser(factory, "test"):
        print(message.partition, message.data)
"""

from twisted.internet import threads
from zope.interface import implementer

from metamorphosis.client.blocking import BlockingProxy
from metamorphosis.client.browser import createTopicBrowser
from metamorphosis.client.consumer import asListener, createBroadcastConsumer, createConsumer
from metamorphosis.client.interfaces import IMessageListener


@implementer(IMessageListener)
class ThreadedListener:
    """
    Runs a blocking listener in the reactor's thread pool.
    """

    def __init__(self, listener, reactor):
        self.listener = asListener(listener)
        self.reactor = reactor

    def receiveMessages(self, message):
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                         self.listener.receiveMessages, message)


class BlockingMessageConsumer(BlockingProxy):
    """
    A blocking L{metamorphosis.client.consumer.MessageConsumer}.
    """

    def subscribe(self, topic, maxSize, listener, messageFilter=None):
        """
        Consume C{topic} with a blocking C{listener} (an
        L{IMessageListener} or a callable taking the message).
        """
        threaded = ThreadedListener(listener, self.thread.reactor)
        self._call("subscribe", topic, maxSize, threaded, messageFilter)
        return self

    def completeSubscribe(self):
        return self._call("completeSubscribe")

    def shutdown(self):
        return self._call("shutdown")

    def get(self, topic, partition, offset, maxSize, brokerUrl, timeout=None):
        return self._call("get", topic, partition, offset, maxSize, brokerUrl, timeout)

    def ownedPartitions(self):
        return self._call("ownedPartitions")


def createBlockingConsumer(factory, config, offsetStorage=None):
    """
    A blocking consumer of a
    L{metamorphosis.client.blocking.BlockingMessageSessionFactory}.
    """
    return BlockingMessageConsumer(
        factory.thread.call(createConsumer, factory.wrapped, config, offsetStorage),
        factory.thread)


def createBlockingBroadcastConsumer(factory, config, offsetsPath=None):
    """
    A blocking broadcast consumer (see
    L{metamorphosis.client.consumer.createBroadcastConsumer}).
    """
    return BlockingMessageConsumer(
        factory.thread.call(createBroadcastConsumer, factory.wrapped, config, offsetsPath),
        factory.thread)


class BlockingTopicBrowser(BlockingProxy):
    """
    A blocking L{metamorphosis.client.browser.TopicBrowser}: a plain
    iterator over the topic's messages.
    """

    def __iter__(self):
        while True:
            batch = self._call("nextBatch")
            if not batch:
                return
            yield from batch


def createBlockingTopicBrowser(factory, topic, maxSize=1024 * 1024, timeout=5.0):
    """
    A blocking topic browser of a
    L{metamorphosis.client.blocking.BlockingMessageSessionFactory}.
    """
    return BlockingTopicBrowser(
        factory.thread.call(createTopicBrowser, factory.wrapped, topic, maxSize, timeout),
        factory.thread)
