"""
The consumer's fetch loop (docs/client-consumer.md, Java's
C{SimpleFetchManager.FetchRequestRunner}).

Each owned partition has one L{FetchRequest}; L{FetchManager} runs one
loop per request on the reactor: fetch, hand the messages to the listener
one by one, advance the offset past what was consumed, and schedule the
next round after the request's delay.  The delay, retry and C{maxSize}
rules are Java's, so a Python consumer paces a broker as a Java one does.
"""

import inspect
import struct
from collections import OrderedDict

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.logfields import errorText
from metamorphosis.protocol import records

MAX_READ_BUFFER_SIZE = 2 * 1024 * 1024
"""Java's C{notify.remoting.max_read_buffer_size}: the largest body the
decoder accepts and the size beyond which C{maxSize} stops doubling."""


class ReceivedMessage(Message):
    """
    A message as a listener receives it: a L{Message} that also carries
    the controls Java puts on the message and its partition object.

    In auto-acknowledge mode (the default) the offset moves past each
    message the listener returns from.  After L{setAutoAck}C{(False)}
    consumed messages are only acknowledged by L{ack} (everything consumed
    of the partition so far, this message included) or discarded by
    L{rollback} (fetched again from the last acknowledged offset).
    """

    __slots__ = ("_request", "rollbackOnly")

    def __init__(self, topic, data, attribute, id, partition, request):
        Message.__init__(self, topic, data, attribute, id, partition)
        self._request = request
        self.rollbackOnly = False

    def setRollbackOnly(self):
        """
        Do not consume this message: the round stops before it and it is
        fetched again.
        """
        self.rollbackOnly = True

    def setAutoAck(self, autoAck):
        self._request.autoAck = autoAck

    def isAutoAck(self):
        return self._request.autoAck

    def ack(self):
        self._request.acked = True

    def rollback(self):
        self._request.rolledBack = True


class MessageIdCache:
    """
    The ids of messages already processed, keyed C{group + id} as Java's
    JVM-wide C{ConcurrentLRUHashMap} (capacity 4096,
    C{metaq.consumer.message_ids.lru_cache.size}), so a message fetched
    twice (after an C{offset} reset or a rebalance) is not processed twice.
    """

    def __init__(self, capacity=4096):
        self.capacity = capacity
        self._ids = OrderedDict()

    def __contains__(self, key):
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        return False

    def add(self, key):
        ids = self._ids
        if key in ids:
            ids.move_to_end(key)
            return
        ids[key] = True
        if len(ids) > self.capacity:
            ids.popitem(last=False)


processedIds = MessageIdCache()
"""The process-wide cache (Java's is per JVM)."""


def invalidRecordAt(data):
    """
    Where the first record of C{data} that fails its checksum starts, and
    its size when it is whole in C{data} (else L{None}).
    """
    position = 0
    try:
        for _, end in records.iterRecords(data, True, MAX_READ_BUFFER_SIZE):
            position = end
    except records.InvalidRecord:
        pass
    if len(data) - position < records.HEADER_SIZE:
        return position, None
    (length,) = struct.unpack_from(">i", data, position)
    size = records.HEADER_SIZE + length
    if length < 0 or position + size > len(data):
        return position, None
    return position, size


class FetchRequest:
    """
    The fetch state of one partition (Java's C{FetchRequest}).

    @ivar info: the partition's committed L{PartitionOffset}.
    @ivar tmpOffset: the offset consumed but not yet acknowledged in manual
        mode, -1 when none.
    @ivar delay: seconds to wait before the next round.
    """

    def __init__(self, brokerUrl, info, maxSize):
        self.brokerUrl = brokerUrl
        self.info = info
        self.maxSize = maxSize
        self.originalMaxSize = maxSize
        self.retries = 0
        self.delay = 0.0
        self.tmpOffset = -1
        self.autoAck = True
        self.acked = False
        self.rolledBack = False
        # The absolute offset of the last record that failed its checksum,
        # and how many fetches in a row met it there.
        self.invalidOffset = -1
        self.invalidCount = 0

    def __repr__(self):
        return "<FetchRequest %s %s@%s offset=%d maxSize=%d>" % (
            self.topic, self.partition, self.brokerUrl, self.offset, self.maxSize)

    @property
    def topic(self):
        return self.info.topic

    @property
    def partition(self):
        return self.info.partition

    @property
    def offset(self):
        """
        Where the next fetch starts: the unacknowledged offset if any,
        else the committed one.
        """
        return self.tmpOffset if self.tmpOffset > 0 else self.info.offset

    def setOffset(self, offset, messageId, ack):
        if ack:
            self.info.offset = offset
            if messageId != -1:
                self.info.messageId = messageId
            self.info.modified = True
            self.tmpOffset = -1
        else:
            self.tmpOffset = offset

    def increaseMaxSize(self):
        if self.maxSize <= MAX_READ_BUFFER_SIZE:
            self.maxSize *= 2

    def decreaseMaxSize(self):
        if self.maxSize < self.originalMaxSize:
            self.maxSize = self.originalMaxSize
        elif self.maxSize > self.originalMaxSize:
            self.maxSize //= 2


def hasCompleteRecord(data):
    """
    Java's C{MessageIterator.hasNext()} at position 0: at least one whole
    record (checksums are checked later, record by record).
    """
    if data is None or len(data) < records.HEADER_SIZE:
        return False
    length = records.decodeHeader(data)[0]
    return len(data) - records.HEADER_SIZE >= length


class FetchManager:
    """
    Runs the fetch loops of one consumer.

    @param consumer: gives C{group}, C{config} (a C{ConsumerConfig}),
        C{fetch(request)} (a Deferred of the fetched bytes or L{None}),
        C{offsetFor(request)} (a Deferred of a valid offset),
        C{subscriptionOf(topic)} (the listener and filter) and
        C{appendCouldNotProcess(message)} (local recovery).
    """

    log = Logger()

    def __init__(self, consumer, clock, idCache=processedIds):
        self.consumer = consumer
        self.clock = clock
        self.idCache = idCache
        self.requests = []
        self._calls = {}
        self._running = {}
        self._fetching = {}
        self.stopped = True
        #: Records moved past after failing their checksum too often.
        self.invalidSkipped = 0

    @property
    def config(self):
        return self.consumer.config

    def start(self, requests):
        """
        Start one loop per request.
        """
        self.stopped = False
        self.requests = list(requests)
        for request in self.requests:
            self._schedule(request, 0)

    def stop(self):
        """
        Stop every loop.

        @return: a Deferred firing once the rounds in progress (and the
            listener calls in them) are over, so that their offsets can be
            committed.
        """
        self.stopped = True
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        # A fetch waiting for its reply is abandoned; a round already
        # handing messages to the listener is let finish.
        for fetching in list(self._fetching.values()):
            fetching.cancel()
        running = list(self._running.values())
        self.requests = []
        return defer.DeferredList(running, consumeErrors=True).addCallback(lambda _: None)

    def _schedule(self, request, delay):
        if self.stopped:
            return
        self._calls[id(request)] = self.clock.callLater(delay, self._run, request)

    def _run(self, request):
        self._calls.pop(id(request), None)
        d = self._running[id(request)] = defer.ensureDeferred(self.processRequest(request))

        def done(result):
            self._running.pop(id(request), None)
            if isinstance(result, Failure):
                self.log.failure("Fetch round of {request} failed", result, request=str(request))
                self.updateDelay(request)
            self._schedule(request, request.delay)
        d.addBoth(done)

    def updateDelay(self, request):
        """
        Back off: one tenth of C{maxDelayFetchTimeInMills} more, up to it.
        """
        maxDelay = self.config.maxDelayFetchTimeInMills / 1000.0
        request.delay = min(request.delay + maxDelay / 10, maxDelay)

    def retryDelay(self, request):
        maxDelay = self.config.maxDelayFetchTimeInMills / 1000.0
        return min(maxDelay / 10 * request.retries, maxDelay)

    async def processRequest(self, request):
        """
        One round of one partition.
        """
        fetching = self._fetching[id(request)] = defer.ensureDeferred(
            self.consumer.fetch(request))
        try:
            data = await fetching
        except defer.CancelledError:
            return
        except MetaClientError as e:
            self.log.warn("Fetching {request} failed: {error}", request=str(request), error=errorText(e))
            self.updateDelay(request)
            return
        finally:
            self._fetching.pop(id(request), None)
        if not hasCompleteRecord(data):
            if (request.retries > self.config.maxIncreaseFetchDataRetries
                    and data is not None and len(data) > 0):
                request.increaseMaxSize()
                self.log.warn("No complete message of {request} in {n} fetches; maxSize "
                              "raised to {size}", request=str(request), n=request.retries,
                              size=request.maxSize)
            if data is not None:
                request.retries += 1
            self.updateDelay(request)
            return
        try:
            if request.retries > self.config.maxFetchRetries:
                await self._divert(request, data)
            else:
                await self._receive(request, data)
        except records.InvalidRecord as e:
            if self._skipInvalid(request, data):
                return
            self.log.warn("Invalid message in {request}: {error}; asking for a valid offset",
                          request=str(request), error=errorText(e))
            await self._resetOffset(request)

    def _skipInvalid(self, request, data):
        """
        Count the fetches that met the same damaged record; past
        C{maxInvalidMessageRetries} of them move past it (by its length
        field, when the whole record is in C{data}), so that a consumer
        never loops for good on a record the broker keeps serving (a broker
        that does not verify its files, or one still verifying).

        @return: whether it was skipped.
        """
        position, size = invalidRecordAt(data)
        offset = request.offset + position
        if offset == request.invalidOffset:
            request.invalidCount += 1
        else:
            request.invalidOffset, request.invalidCount = offset, 1
        if request.invalidCount <= self.config.maxInvalidMessageRetries or size is None:
            return False
        self.invalidSkipped += 1
        self.log.error(
            "Skipping the invalid message of {request} at offset {offset} ({size} bytes): "
            "its checksum failed in {n} fetches", request=str(request), offset=offset,
            size=size, n=request.invalidCount)
        request.invalidOffset, request.invalidCount = -1, 0
        request.retries = 0
        if not self.stopped:
            request.setOffset(offset + size, request.info.messageId, request.autoAck)
        return True

    def _message(self, request, record):
        data, attribute = records.decodePayload(record.body, record.flag)
        return ReceivedMessage(request.topic, data, attribute, record.id,
                               request.partition, request)

    async def _divert(self, request, data):
        """
        The partition failed too often: give its first message to local
        recovery and move past it (Java's C{processWhenRetryTooMany}).
        """
        record, end = next(records.iterRecords(data, True, MAX_READ_BUFFER_SIZE))
        message = self._message(request, record)
        self.log.warn("Message {id} of {request} failed {n} times; handing it to local "
                      "recovery", id=record.id, request=str(request), n=request.retries)
        await self.consumer.appendCouldNotProcess(message)
        request.retries = 0
        request.setOffset(request.offset + end, record.id, True)
        request.delay = 0

    async def _receive(self, request, data):
        listener, messageFilter = self.consumer.subscriptionOf(request.topic)
        group = self.consumer.group
        consumed = 0
        lastId = -1
        unacked = []
        request.acked = request.rolledBack = False
        for record, end in records.iterRecords(data, True, MAX_READ_BUFFER_SIZE):
            key = group + str(record.id)
            if key in self.idCache:
                consumed, lastId = end, record.id
                continue
            message = self._message(request, record)
            if self._accepts(messageFilter, group, message, request):
                try:
                    result = listener.receiveMessages(message)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception:
                    self.log.failure("Processing message {id} of {request} failed",
                                     id=record.id, request=str(request))
                    break
            if message.rollbackOnly:
                break
            consumed, lastId = end, record.id
            if request.autoAck:
                self.idCache.add(key)
            elif request.acked:
                for pending in unacked:
                    self.idCache.add(pending)
                self.idCache.add(key)
                break
            elif request.rolledBack:
                break
            else:
                unacked.append(key)
        self._afterRound(request, consumed, lastId)

    def _accepts(self, messageFilter, group, message, request):
        if messageFilter is None:
            return True
        try:
            return bool(messageFilter.accept(group, message))
        except Exception:
            self.log.failure("Filter of {request} failed; skipping message {id}",
                             request=str(request), id=message.id)
            return False

    def _afterRound(self, request, consumed, lastId):
        # Java's postReceiveMessage.
        if consumed == 0:
            request.retries += 1
        else:
            request.retries = 0
        newOffset = request.offset + consumed
        if request.autoAck:
            request.setOffset(newOffset, lastId, True)
        elif request.rolledBack:
            request.tmpOffset = -1
            request.rolledBack = request.acked = False
        elif request.acked:
            request.rolledBack = request.acked = False
            request.setOffset(newOffset, lastId, True)
        else:
            request.setOffset(newOffset, lastId, False)
        request.delay = self.retryDelay(request)

    async def _resetOffset(self, request):
        """
        A record failed its checksum: ask the broker for a valid offset at
        or before the current one and restart there; the id cache hides
        the messages seen again.
        """
        try:
            offset = await self.consumer.offsetFor(request)
        except MetaClientError as e:
            self.log.warn("Asking a valid offset of {request} failed: {error}",
                          request=str(request), error=errorText(e))
            return
        request.retries = 0
        if not self.stopped:
            request.setOffset(offset, request.info.messageId, request.autoAck)
