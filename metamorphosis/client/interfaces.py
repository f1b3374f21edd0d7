"""
The pluggable parts of the client.

Each interface names one decision or one source of facts the Java client
also lets users replace.  (Producer-side interfaces first; consumer-side
interfaces follow below.)
"""

from zope.interface import Attribute, Interface

# -- producer side --------------------------------------------------------


class IPartitionSelector(Interface):
    """
    Chooses the partition a message is sent to (Java's
    C{PartitionSelector}).
    """

    def getPartition(topic, partitions, message):
        """
        Pick one partition for C{message}.

        @param topic: the topic being sent to.
        @param partitions: the topic's writable partitions, a list of
            L{metamorphosis.client.partition.Partition} sorted numerically
            by (broker id, partition); may be empty.
        @param message: the L{metamorphosis.client.message.Message}; it must
            not be changed.
        @return: one L{Partition}.
        @raise metamorphosis.client.errors.MetaClientError: no partition can
            be chosen (Java: "There is no aviable partition for topic ...").
        """


class IBrokerDiscovery(Interface):
    """
    Where a producer learns a topic's master partitions and the brokers
    that hold them: ZooKeeper (zookeeper.md section 4) or a fixed
    C{meta://} URL.
    """

    def publish(topic):
        """
        Start following C{topic}.

        @return: a Deferred that fires (with L{None}) once the topic's first
            view is known; later changes are reported to the listeners.
        """

    def unpublish(topic):
        """
        Stop following C{topic}.
        """

    def partitionsFor(topic):
        """
        @return: the topic's known master partitions, sorted, or L{None}
            when the topic is not published.
        """

    def brokerUrlFor(topic, partition):
        """
        @return: the C{meta://host:port} URL of the broker to send
            C{partition} of C{topic} to, or L{None}.
        """

    def brokerUrls(topic):
        """
        @return: the set of broker URLs the topic currently lives on.
        """

    def addListener(listener):
        """
        Call C{listener(topic)} on the reactor thread whenever a published
        topic's brokers or partitions change (and after its first view).
        """

    def stop():
        """
        Stop following every topic.

        @return: a Deferred.
        """


class ISendMessageCallback(Interface):
    """
    The callback form of an asynchronous send (Java's
    C{SendMessageCallback}).
    """

    def onMessageSent(result):
        """
        The broker answered, or the request timed out: C{result} is a
        L{metamorphosis.client.producer.SendResult} (a timeout gives a failed
        result whose error message is gecko's C{等待响应超时}).
        """

    def onException(failure):
        """
        The message could not be sent (no partition, no connection): a
        L{twisted.python.failure.Failure}.
        """


class ILocalMessageStorage(Interface):
    """
    Messages a producer could not send now, kept on local disk in order per
    (topic, partition) until they can be re-sent (the ordered producer's
    spill, the async producer's overflow).
    """

    def append(message, partition):
        """
        Keep C{message} for C{partition} after every message already kept
        for it.

        @return: a Deferred that fires once the message is written.
        """

    def count(topic, partition):
        """
        @return: how many messages are kept for (C{topic}, C{partition}).
        """

    def keys():
        """
        @return: the (topic, partition) pairs that have kept messages.
        """

    def replay(topic, partition, send):
        """
        Re-send the messages kept for (C{topic}, C{partition}) in order:
        C{send(message)} returns a Deferred that fires with true when the
        message may be forgotten; replay stops at the first false result or
        failure.  Replays of one key never overlap.

        @return: a Deferred firing with the number of messages re-sent.
        """

    close = Attribute("A callable returning a Deferred that closes the storage.")
