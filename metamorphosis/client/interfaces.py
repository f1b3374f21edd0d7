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
        @param partitions: the topic's writable partitions, a sequence of
            L{metamorphosis.client.partition.Partition} sorted numerically
            by (broker id, partition); may be empty or L{None}.
        @param message: the L{metamorphosis.client.message.Message}; it must
            not be changed.
        @return: one L{Partition}.
        @raise metamorphosis.client.errors.MetaClientError: no partition can
            be chosen (Java: "There is no aviable partition for topic ...").
        """


class IBrokerDiscovery(Interface):
    """
    Where a producer learns a topic's master partitions and the brokers
    that hold them: ZooKeeper (docs/zookeeper.md) or a fixed
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
        @return: the topic's known master partitions, sorted, as a
            sequence the caller must not modify, or L{None} when the topic
            is not published.
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


# -- consumer side --------------------------------------------------------


class IMessageListener(Interface):
    """
    Receives a consumer's messages (Java's C{MessageListener}).
    """

    def receiveMessages(message):
        """
        Process one L{metamorphosis.client.fetch.ReceivedMessage}.

        @return: L{None}, or a L{Deferred} (or a coroutine) the consumer
            waits for before the next message of the partition.  Raising,
            or a failing Deferred, means the message was not processed: it
            is fetched again, and after C{maxFetchRetries} failed rounds it
            goes to local recovery.
        """


class IConsumerMessageFilter(Interface):
    """
    A client-side filter (Java's C{ConsumerMessageFilter}).
    """

    def accept(group, message):
        """
        @return: whether the listener should see C{message}; a message not
            accepted (or for which this raises) is skipped and counts as
            consumed.
        """


class ILoadBalanceStrategy(Interface):
    """
    A rule giving one consumer its share of a topic's partitions.
    """

    def getPartitions(topic, consumerId, consumers, partitions):
        """
        The partitions C{consumerId} should own.

        @param consumers: the consumer id strings of the group subscribed to
            C{topic}, sorted with L{javaStringKey}.
        @param partitions: the partition strings (C{"<brokerId>-<n>"}) of the
            topic, sorted with L{javaStringKey}.
        @return: a list of partition strings, a subset of C{partitions}.
        """


class IOffsetStorage(Interface):
    """
    Durable offsets of consumer groups.  Every method returns a L{Deferred}.
    """

    def load(topic, group, partition):
        """
        The stored state of C{partition}, a L{PartitionOffset} (not
        modified), or L{None} if nothing was ever stored.
        """

    def initOffset(topic, group, partition, offset):
        """
        Note that C{group} starts consuming C{partition} at C{offset}, for
        storages that need a record before they can update it.
        """

    def commitOffset(group, offsets):
        """
        Persist, in one batch, those of C{offsets} (L{PartitionOffset}s) that
        are modified, and clear their modified flags.  A batch that fails
        leaves them modified for the next commit.
        """

    def close():
        """
        Release connections and files.
        """
