"""
Producers (C{client/producer/SimpleMessageProducer.java} and the ordered
and asynchronous producers of C{client/extension/producer/}).

A producer picks a partition with its L{IPartitionSelector}, sends a C{put}
with the checksum of 1.4.4 and later to that partition's master broker, and
turns the reply into a L{SendResult}.
"""

from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.logger import Logger

from metamorphosis.client.errors import (
    MetaClientError,
    MetaConnectionError,
    MetaTimeoutError,
    UnavailablePartitionError,
)
from metamorphosis.client.partition import RANDOM_PARTITION, Partition
from metamorphosis.client.selectors import OrderedPartitionSelector, RoundRobinPartitionSelector
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import javaSplit
from metamorphosis.protocol.javalang import parseJavaInt
from metamorphosis.protocol.status import FORBIDDEN, OK
from metamorphosis.protocol.topics import IllegalTopicName, checkTopic

DEFAULT_SEND_TIMEOUT = 3.0
"""Seconds; C{SimpleMessageProducer.DEFAULT_OP_TIMEOUT} (3000 ms)."""

TIMEOUT_ERROR_MESSAGE = "等待响应超时"
"""gecko's synthetic 504 text ("waiting for response timed out"), what a
callback sees for a send that timed out."""

SEND_TO_LOCAL = "send to local"


@dataclass
class SendResult:
    """
    The outcome of one send.

    @ivar success: whether the broker stored the message (or, for an ordered
        producer, it was kept locally: then C{offset} is -1 and
        C{errorMessage} is C{"send to local"}).
    @ivar partition: the L{Partition} it was stored in.
    @ivar offset: the absolute offset of the message in its partition.
    @ivar errorMessage: the broker's error text (C{"403"} for a closed
        partition, as in Java), or L{None}.
    @ivar messageId: the id the broker gave the message.
    """

    success: bool
    partition: Partition | None = None
    offset: int = -1
    errorMessage: str | None = None
    messageId: int | None = None


def checkMessage(message):
    """
    The Java producer's C{checkMessage}.

    @raise MetaClientError: no message, a blank topic, or no data.
    """
    if message is None:
        raise MetaClientError("Null message")
    if not message.topic or not message.topic.strip():
        raise MetaClientError("Blank topic")
    try:
        checkTopic(message.topic)
    except IllegalTopicName as e:
        raise MetaClientError(str(e))
    if message.data is None:
        raise MetaClientError("Null data")


class MessageProducer:
    """
    Sends messages to the brokers of a session factory
    (L{metamorphosis.client.session.MetaMessageSessionFactory.createProducer}).
    """

    log = Logger()

    def __init__(self, sessionFactory, selector=None):
        self.sessionFactory = sessionFactory
        self.selector = selector if selector is not None else RoundRobinPartitionSelector()
        self._topics = set()
        self._defaultTopic = None
        self._shutdown = False

    def publish(self, topic):
        """
        Declare that this producer sends to C{topic}; needed before sending
        (it starts following the topic's brokers).

        @return: a Deferred that fires when the topic's brokers are known and
            connections to them are being made.
        """
        self._checkOpen()
        checkTopic(topic)
        self._topics.add(topic)
        return self.sessionFactory.publishTopic(topic, self)

    def setDefaultTopic(self, topic):
        """
        Send messages of topics that were never published to the brokers
        and partitions of C{topic}.

        @return: the Deferred of L{publish}.
        """
        if self._defaultTopic is not None and self._defaultTopic != topic:
            raise MetaClientError("Default topic has been setup already:%s" % (self._defaultTopic,))
        self._defaultTopic = topic
        return self.publish(topic)

    def shutdown(self):
        """
        Stop this producer and unpublish its topics.

        @return: a Deferred.
        """
        if self._shutdown:
            return defer.succeed(None)
        self._shutdown = True
        for topic in self._topics:
            self.sessionFactory.unpublishTopic(topic, self)
        self._topics.clear()
        self.sessionFactory.producerShutdown(self)
        return defer.succeed(None)

    def _checkOpen(self):
        if self._shutdown:
            raise MetaClientError("Producer has been shutdown")

    # -- routing ----------------------------------------------------------

    def _routeTopic(self, topic):
        """
        The topic whose brokers carry C{topic}: itself when published, else
        the default topic.
        """
        return self._route(topic)[0]

    def _route(self, topic):
        """
        @return: C{(routeTopic, its partitions)}, see L{_routeTopic}.
        """
        partitions = self.sessionFactory.discovery.partitionsFor(topic)
        if partitions is not None:
            return topic, partitions
        if self._defaultTopic is not None:
            return self._defaultTopic, self.sessionFactory.discovery.partitionsFor(self._defaultTopic)
        raise MetaClientError(
            "There is no aviable partition for topic %s,maybe you don't publish it at first?" % (topic,)
        )

    def _select(self, message):
        """
        @return: C{(partition, brokerUrl)} for C{message}.
        """
        routeTopic, partitions = self._route(message.topic)
        if getattr(self.selector, "skipsUnreachableBrokers", False):
            partitions = self._reachable(routeTopic, partitions)
        partition = self.selector.getPartition(routeTopic, partitions, message)
        if partition is None:
            raise MetaClientError(
                "There is no aviable partition for topic %s,maybe you don't publish it at first?"
                % (message.topic,)
            )
        return partition, self._brokerUrl(message.topic, partition, routeTopic)

    def _reachable(self, routeTopic, partitions):
        """
        The C{partitions} whose broker has a connection up, or all of them
        when none has: a broker killed without leaving ZooKeeper stays
        listed until its session expires, and sends to it would each wait
        for a connection for their whole timeout.
        """
        discovery = self.sessionFactory.discovery
        connections = self.sessionFactory.connections
        reachable = []
        for partition in partitions or ():
            connection = connections.get(discovery.brokerUrlFor(routeTopic, partition))
            if connection is not None and connection.connected:
                reachable.append(partition)
        return reachable or partitions

    def _brokerUrl(self, topic, partition, routeTopic=None):
        if routeTopic is None:
            routeTopic = self._routeTopic(topic)
        url = self.sessionFactory.discovery.brokerUrlFor(routeTopic, partition)
        if url is None:
            raise MetaClientError(
                "There is no aviable server right now for topic %s and partition %s,"
                "maybe you don't publish it at first?" % (topic, partition)
            )
        return url

    def _connection(self, url):
        connection = self.sessionFactory.connections.get(url)
        if connection is None:
            raise MetaConnectionError("No connection to %s" % (url,))
        return connection

    # -- sending ----------------------------------------------------------

    def sendMessage(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Send one message and wait for the broker's answer.

        @param timeout: seconds to wait for the reply (3 by default).
        @return: a Deferred firing with a L{SendResult} (failed when the
            broker refused the message), or failing with
            L{MetaTimeoutError}, L{MetaConnectionError} or
            L{MetaClientError}.  On success the message's C{id} and
            C{partition} are set.
        """
        try:
            self._checkOpen()
            checkMessage(message)
            partition, url = self._select(message)
        except MetaClientError as e:
            return defer.fail(e)
        return self._sendTo(message, partition, url, timeout)

    def _sendTo(self, message, partition, url, timeout):
        try:
            connection = self._connection(url)
        except MetaClientError as e:
            return defer.fail(e)
        body, flag = message.encode()
        d = self._put(connection, message.topic, partition, body, flag, timeout)
        return d.addCallback(self._sendResult, message, partition)

    def _put(self, connection, topic, partition, body, flag, timeout):
        """
        Send the put command; a transactional producer adds its
        transaction key here.
        """
        return connection.request(
            "put", topic, partition.partition, body, flag, records.checksum(body), timeout=timeout
        )

    def _sendResult(self, reply, message, partition):
        """
        C{SimpleMessageProducer.genSendResult}.
        """
        code = getattr(reply, "code", None)
        text = reply.body.decode("utf-8", "replace") if code is not None else ""
        if code == OK:
            try:
                # Java's genSendResult: split on single spaces (trailing
                # empty tokens dropped), Long.parseLong, Integer.parseInt.
                idText, partitionText, offsetText = javaSplit(text)
                messageId = parseJavaInt(idText, bits=64)
                partitionNumber = parseJavaInt(partitionText)
                offset = parseJavaInt(offsetText, bits=64)
            except ValueError:
                return SendResult(False, None, -1, "Invalid put reply: %r" % (text,))
            message.id = messageId
            if partition.partition != partitionNumber:
                # Partition -1: the broker chose.
                partition = Partition(partition.brokerId, partitionNumber)
            message.partition = partition
            return SendResult(True, message.partition, offset, None, messageId)
        if code == FORBIDDEN:
            return SendResult(False, None, -1, "403")
        if code is None:
            return SendResult(False, None, -1, "Unexpected reply to put: %r" % (reply,))
        return SendResult(False, None, -1, text)

    def sendMessageWithCallback(self, message, callback, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Send without waiting: C{callback} (an L{ISendMessageCallback}) gets
        C{onMessageSent(result)} for an answer or a timeout (then a failed
        result with gecko's text C{等待响应超时}), or C{onException(failure)}
        when the message could not be sent at all.
        """

        def timedOut(failure):
            failure.trap(MetaTimeoutError)
            return SendResult(False, None, -1, TIMEOUT_ERROR_MESSAGE)

        def callbackFailed(failure):
            self.log.failure("Send callback {callback!r} failed", failure, callback=repr(callback))

        d = self.sendMessage(message, timeout).addErrback(timedOut)
        d.addCallbacks(callback.onMessageSent, callback.onException)
        d.addErrback(callbackFailed)


class SlidingWindow:
    """
    A count of units in flight with an upper bound (the async producer's
    C{SlidingWindow}).
    """

    def __init__(self, size):
        self.size = size
        self.used = 0
        self._emptyWaiters = []
        self._spaceWaiters = []

    def tryAcquire(self, units):
        """
        Take C{units} if they fit.

        @return: whether they were taken.
        """
        if self.used + units > self.size:
            return False
        self.used += units
        return True

    def release(self, units):
        self.used -= units
        if self.used == 0:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for waiter in waiters:
                waiter.callback(None)
        while self._spaceWaiters and self.used + self._spaceWaiters[0][0] <= self.size:
            self._spaceWaiters.pop(0)[1].callback(None)

    def whenEmpty(self):
        """
        @return: a Deferred that fires when nothing is in flight.
        """
        if self.used == 0:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._emptyWaiters.append(waiter)
        return waiter

    def whenAvailable(self, units):
        """
        @return: a Deferred that fires when C{units} would fit.
        """
        if self.used + units <= self.size and not self._spaceWaiters:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._spaceWaiters.append((units, waiter))
        return waiter


def windowUnits(message):
    """
    The window units a message takes, as Java counts them:
    C{max(1, len(data) // 4096)}.
    """
    return max(1, len(message.data) // 4096)


class AsyncMessageProducer(MessageProducer):
    """
    Fire-and-forget sending (C{AsyncMetaMessageProducer}): a message goes
    out at once and only a failure is logged.  At most C{windowSize} units
    (L{windowUnits}) are in flight; a message that does not fit, or that
    cannot be sent, is handed to the local storage and re-sent by the
    session factory's recovery task.

    @ivar failedCount: sends answered with an error or not answered.

    @param storage: an L{ILocalMessageStorage} for messages that could not
        be sent, or L{None} to drop (and log) them.
    """

    def __init__(self, sessionFactory, selector=None, windowSize=20000, storage=None):
        super().__init__(sessionFactory, selector)
        self.window = SlidingWindow(windowSize)
        self.storage = storage
        self.failedCount = 0

    def asyncSendMessage(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Send C{message} without waiting for the broker.

        @return: C{True} if it went out, C{False} if it was handed to the
            local storage (window full, no partition, no connection).
        @raise MetaClientError: the message is invalid (Java drops it).
        """
        checkMessage(message)
        self._checkOpen()
        units = windowUnits(message)
        if not self.window.tryAcquire(units):
            self._keep(message, "sliding window is full")
            return False
        try:
            partition, url = self._select(message)
            connection = self._connection(url)
            if not connection.connected:
                # Java's sendToGroup fails at once without a connection.
                raise MetaConnectionError("No connection to %s" % (url,))
        except MetaClientError as e:
            self.window.release(units)
            self._keep(message, str(e))
            return False
        body, flag = message.encode()
        d = self._put(connection, message.topic, partition, body, flag, timeout)
        d.addCallback(self._sendResult, message, partition)
        d.addBoth(self._sent, message, units)
        return True

    def _sent(self, result, message, units):
        self.window.release(units)
        if isinstance(result, SendResult):
            if not result.success:
                self.failedCount += 1
                self.log.warn(
                    "Async send to {topic} failed: {error}", topic=message.topic, error=result.errorMessage
                )
        else:
            self.failedCount += 1
            self.log.warn(
                "Async send to {topic} failed: {error}", topic=message.topic, error=result.getErrorMessage()
            )

    def _keep(self, message, why):
        if self.storage is None:
            self.log.warn("Dropping message to {topic}: {why}", topic=message.topic, why=why)
            return
        self.storage.append(message, RANDOM_PARTITION).addErrback(
            lambda f: self.log.failure("Keeping message to {topic} locally failed", f, topic=message.topic)
        )

    def flush(self):
        """
        @return: a Deferred that fires when every message sent so far has
            been answered (or timed out).
        """
        return self.window.whenEmpty()

    def whenWindowAvailable(self, message):
        """
        @return: a Deferred that fires when C{message} would fit in the
            window (for callers that prefer waiting to local storage).
        """
        return self.window.whenAvailable(windowUnits(message))

    def recover(self, topic, partition):
        """
        Re-send the messages kept for (C{topic}, C{partition}) through the
        selector; stops at the first failure.
        """

        def resend(message):
            message.partition = None
            return self.sendMessage(message).addCallback(lambda result: result.success)

        return self.storage.replay(topic, partition, resend)


class OrderedMessageProducer(MessageProducer):
    """
    Keeps the order of the messages of one key even while their partition
    is unavailable (C{OrderedMessageProducer}, docs/client-producer.md).

    The selector (an L{OrderedPartitionSelector}) maps a key to one of the
    topic's I{configured} partitions.  When that partition is not available
    (its broker is absent or disconnected), or the broker answers 403, the
    message is kept in the local storage and C{SendResult(True, partition,
    -1, "send to local")} is returned.  A partition with kept messages gets
    them re-sent, in order, before any new message: up to
    C{maxInlineRecovery} of them are re-sent while the new message waits;
    with more the new message is kept too and a background recovery runs.
    Sends to one partition are serialised, so order also holds for callers
    that do not wait for each result.

    @param saveToLocalWhenFailed: keep the message locally on any failed
        send, not only on 403 (Java's C{meta.ordered.saveToLocalWhenFailed}).
    """

    maxInlineRecovery = 20

    def __init__(self, sessionFactory, selector, storage, saveToLocalWhenFailed=False):
        if not isinstance(selector, OrderedPartitionSelector):
            raise MetaClientError("An ordered producer needs an OrderedPartitionSelector")
        super().__init__(sessionFactory, selector)
        self.storage = storage
        self.saveToLocalWhenFailed = saveToLocalWhenFailed
        self._locks = {}

    def _lock(self, topic, partition):
        key = (topic, partition)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        return lock

    def _available(self, topic):
        """
        The partitions of C{topic} that can be written now: known in
        discovery and with their broker connected.
        """
        discovery = self.sessionFactory.discovery
        connections = self.sessionFactory.connections
        available = []
        for partition in discovery.partitionsFor(topic) or []:
            url = discovery.brokerUrlFor(topic, partition)
            connection = connections.get(url) if url is not None else None
            if connection is not None and connection.connected:
                available.append(partition)
        return available

    def sendMessage(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        try:
            self._checkOpen()
            checkMessage(message)
            topic = message.topic
            try:
                partition = self.selector.getPartition(topic, self._available(topic), message)
                writable = True
            except UnavailablePartitionError as e:
                partition, writable = e.partition, False
        except MetaClientError as e:
            return defer.fail(e)
        lock = self._lock(topic, partition)
        if not writable:
            return lock.run(self._keep, message, partition)
        return lock.run(self._sendOrdered, message, partition, timeout)

    def _keep(self, message, partition):
        def kept(_):
            return SendResult(True, partition, -1, SEND_TO_LOCAL)

        def failed(failure):
            self.log.failure("Keeping message to {topic} locally failed", failure, topic=message.topic)
            return SendResult(False, None, -1, "send message to local failed")

        return self.storage.append(message, partition).addCallbacks(kept, failed)

    @defer.inlineCallbacks
    def _sendOrdered(self, message, partition, timeout):
        topic = message.topic
        pending = self.storage.count(topic, partition)
        if pending > self.maxInlineRecovery:
            self.sessionFactory.reactor.callLater(0, self._recoverInBackground, topic, partition)
            return (yield self._keep(message, partition))
        if pending:
            yield self._replay(topic, partition)
            if self.storage.count(topic, partition):
                return (yield self._keep(message, partition))
        url = self._brokerUrl(topic, partition)
        result = yield self._sendTo(message, partition, url, timeout)
        if not result.success and (result.errorMessage == "403" or self.saveToLocalWhenFailed):
            self.log.warn("Send to server failed, keeping locally: {error}", error=result.errorMessage)
            return (yield self._keep(message, partition))
        return result

    def _replay(self, topic, partition):
        def resend(message):
            if partition not in self._available(topic):
                return defer.succeed(False)
            url = self._brokerUrl(topic, partition)
            d = self._sendTo(message, partition, url, DEFAULT_SEND_TIMEOUT)
            return d.addCallback(lambda result: result.success)

        return self.storage.replay(topic, partition, resend)

    def _recoverInBackground(self, topic, partition):
        self.recover(topic, partition).addErrback(
            lambda f: self.log.failure("Re-sending kept messages of {topic} failed", f, topic=topic)
        )

    def recover(self, topic, partition):
        """
        Re-send the messages kept for (C{topic}, C{partition}) in order,
        between sends of new messages; stops at the first failure.

        @return: a Deferred firing with the number re-sent.
        """
        if partition not in self._available(topic):
            return defer.succeed(0)
        return self._lock(topic, partition).run(self._replay, topic, partition)


class LocalRecovery:
    """
    The background task that re-sends kept messages every
    C{recoverMessageIntervalInMills} (and whenever a topic's brokers
    change), for the producers that keep messages locally.
    """

    log = Logger()

    def __init__(self, interval, clock):
        self._producers = []
        self._loop = task.LoopingCall(self.recoverAll)
        self._loop.clock = clock
        self._interval = interval
        self._running = None

    def add(self, producer):
        self._producers.append(producer)
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def remove(self, producer):
        if producer in self._producers:
            self._producers.remove(producer)

    def recoverAll(self, topic=None):
        """
        One round: every kept (topic, partition) of every producer, in turn.
        """
        if self._running is not None:
            return self._running

        @defer.inlineCallbacks
        def round():
            for producer in list(self._producers):
                for keyTopic, partition in list(producer.storage.keys()):
                    if topic is not None and keyTopic != topic:
                        continue
                    try:
                        yield producer.recover(keyTopic, partition)
                    except Exception:
                        self.log.failure("Recovering messages of {topic} failed", topic=keyTopic)

        def done(result):
            self._running = None
            return result

        running = round()
        if not running.called:
            self._running = running
            running.addBoth(done)
        return running

    def stop(self):
        if self._loop.running:
            self._loop.stop()
        return self._running or defer.succeed(None)
