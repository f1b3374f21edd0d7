"""
Publishing a change stream in order: L{ChangePublisher} reads row changes
from a L{metamorphosis.usecases.binlog.BinlogSource} in a thread of its
own and sends them with an ordered producer, one queue per partition.

The position saved is the last checkpoint (the end of a transaction) such
that every change before it was acknowledged by the broker.  A restart
from it never skips a change; it may send again, in order, changes after
it that the broker had already acknowledged (duplicates).  A change the
ordered producer kept on local disk (its partition was unavailable) is
sent by the producer before any later change of its partition once the
partition is back; while any kept change has not reached the broker, the
position is not saved.
"""

import itertools
from collections import deque

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from metamorphosis.client.message import Message
from metamorphosis.usecases.binlog import BinlogError, Checkpoint


class _Entry:
    __slots__ = ("checkpoint", "acknowledged")

    def __init__(self, checkpoint=None, acknowledged=False):
        self.checkpoint = checkpoint
        self.acknowledged = acknowledged


class Backoff:
    """
    Delays between retries: C{initial}, doubling up to C{maximum}, and back
    to C{initial} after a success.
    """

    def __init__(self, initial=0.5, maximum=30.0):
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self):
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self):
        self.delay = self.initial


class ChangePublisher(service.Service):
    """
    Reads changes and publishes them in order.

    @param openSource: C{openSource(position, skipThrough)} gives a
        L{BinlogSource}; called in the reader thread.
    @param position: C{(file, pos)} to start from (a checkpoint).
    @param producer: an L{OrderedMessageProducer} with C{topic} published.
    @param state: a L{metamorphosis.tools.tail.StateFile} for the position.
    @param window: changes read and not yet acknowledged, at most.
    @param keptLimit: stop reading while the producer keeps this many
        messages on local disk (the broker is away).
    @param batchSize: changes in one message at most (consecutive changes
        of one partition and one table; 1 sends every change alone).
    """

    log = Logger()

    def __init__(self, openSource, position, producer, topic, state, reactor, window=1000,
                 keptLimit=10000, readBatch=500, backoff=None, batchSize=100,
                 batchBytes=256 * 1024):
        self.openSource = openSource
        self.producer = producer
        self.topic = topic
        self.state = state
        self.reactor = reactor
        self.window = window
        self.keptLimit = keptLimit
        self.readBatch = readBatch
        self.batchSize = batchSize
        self.batchBytes = batchBytes
        self.backoff = backoff or (lambda: Backoff())
        self.position = position
        self.sent = 0
        self._readFrom = position
        self._lastRead = None
        self._saved = None
        self._pending = deque()
        self._queues = {}
        self._inFlight = 0
        self._room = None
        self._sendFailing = False
        self._pool = ThreadPool(1, 1, name="metaq-binlog-reader")
        self._reading = None
        self._senders = {}
        self._waits = set()
        self.failed = defer.Deferred()
        self._loop = task.LoopingCall(self._recoverKept)
        self._loop.clock = reactor

    # -- lifetime ---------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self._pool.start()
        self._save()
        self._loop.start(0.5, now=False)
        self._reading = defer.ensureDeferred(self._readLoop())
        self._reading.addErrback(self._fatal)

    def _fatal(self, failure):
        if not self.failed.called:
            self.failed.errback(failure)

    def stopService(self):
        """
        Stop reading (the read in progress ends at the next heartbeat),
        let the sends in flight finish, save the position.
        """
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self._loop.running:
            self._loop.stop()
        self._wakeReader()
        for wait in list(self._waits):
            wait.cancel()
        if self._reading is not None:
            await self._reading
        for sender in list(self._senders.values()):
            if sender is not None:
                await sender
        self._save()
        await self.state.whenSaved()
        self._pool.stop()

    def _inThread(self, function, *args):
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    async def _sleep(self, delay):
        """
        Wait C{delay} seconds, or until the service stops.
        """
        wait = task.deferLater(self.reactor, delay, lambda: None)
        self._waits.add(wait)
        try:
            await wait
        except defer.CancelledError:
            pass
        finally:
            self._waits.discard(wait)

    # -- reading ----------------------------------------------------------

    async def _readLoop(self):
        source = None
        backoff = self.backoff()
        failing = False
        try:
            while self.running:
                if self._inFlight >= self.window or self._kept() >= self.keptLimit:
                    self._room = defer.Deferred()
                    await self._room
                    continue
                try:
                    if source is None:
                        source = await self._inThread(self.openSource, self._readFrom,
                                                      self._lastRead)
                    items = await self._inThread(
                        source.read, min(self.readBatch, self.window - self._inFlight))
                except BinlogError:
                    raise
                except Exception as e:
                    if source is not None:
                        await self._inThread(_closeQuietly, source)
                        source = None
                    delay = backoff.next()
                    if not failing:
                        failing = True
                        self.log.warn("Reading the binlog failed ({error}); retrying from "
                                      "{file}:{pos}, every {delay} s at first",
                                      error="%s: %s" % (type(e).__name__, e),
                                      file=self._readFrom[0], pos=self._readFrom[1], delay=delay)
                    if self.running:
                        await self._sleep(delay)
                    continue
                if failing:
                    failing = False
                    self.log.info("Reading the binlog works again")
                backoff.reset()
                for item in items:
                    self._enqueue(item)
        finally:
            if source is not None:
                await self._inThread(_closeQuietly, source)

    def _wakeReader(self):
        if self._room is not None:
            self._room, room = None, self._room
            room.callback(None)

    def _kept(self):
        storage = self.producer.storage
        return sum(storage.count(self.topic, p) for p in self._partitions())

    def _partitions(self):
        return self.producer.selector.configuredPartitions(self.topic)

    def _enqueue(self, item):
        if isinstance(item, Checkpoint):
            self._readFrom = self._lastRead = item.position
            self._pending.append(_Entry(item.position, acknowledged=True))
            self._advance()
            return
        position = item.body["position"]
        self._lastRead = (position["file"], position["pos"])
        entry = _Entry()
        self._pending.append(entry)
        self._inFlight += 1
        probe = Message(self.topic, b"", item.attribute)
        probe.partitionKey = item.partitionKey
        partition = self.producer.selector.choosePartition(
            self.topic, self._partitions(), probe)
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = deque()
        queue.append((entry, item))
        if partition not in self._senders:
            # Registered before it runs: a send answered at once may end the
            # sender before ensureDeferred returns.
            self._senders[partition] = None
            sender = defer.ensureDeferred(self._send(partition))
            if partition in self._senders:
                self._senders[partition] = sender
            sender.addErrback(self._fatal)

    # -- sending ----------------------------------------------------------

    async def _send(self, partition):
        """
        Send the queue of one partition, one message at a time, each until
        it is acknowledged (or kept by the producer): a failed send is
        retried before the next message of the partition goes.  A message
        carries up to C{batchSize} consecutive changes of one table.
        """
        queue = self._queues[partition]
        backoff = self.backoff()
        try:
            while queue and self.running:
                count, message = self._batch(queue)
                try:
                    result = await self.producer.sendMessage(message)
                    if not result.success:
                        raise RuntimeError(result.errorMessage)
                except Exception as e:
                    delay = backoff.next()
                    if not self._sendFailing:
                        # Once per outage, not once per change or partition.
                        self._sendFailing = True
                        self.log.warn("Sending to {topic} failed ({error}); retrying every "
                                      "{delay} s at first", topic=self.topic,
                                      error="%s: %s" % (type(e).__name__, e), delay=delay)
                    if self.running:
                        await self._sleep(delay)
                    continue
                backoff.reset()
                if self._sendFailing:
                    self._sendFailing = False
                    self.log.info("Sending to {topic} works again", topic=self.topic)
                for _ in range(count):
                    entry, _ = queue.popleft()
                    entry.acknowledged = True
                self._inFlight -= count
                self.sent += count
                self._advance()
                self._wakeReader()
        finally:
            self._senders.pop(partition, None)

    def _batch(self, queue):
        """
        The message of the changes at the head of C{queue}: one change as
        a JSON object, several (of one table, at most C{batchSize} and
        about C{batchBytes}) as a JSON array.

        @return: C{(number of changes, message)}.
        """
        first = queue[0][1]
        bodies = [first.encode()]
        size = len(bodies[0])
        for _, change in itertools.islice(queue, 1, self.batchSize):
            if change.attribute != first.attribute or size >= self.batchBytes:
                break
            bodies.append(change.encode())
            size += len(bodies[-1]) + 1
        data = bodies[0] if len(bodies) == 1 else b"[" + b",".join(bodies) + b"]"
        message = Message(self.topic, data, first.attribute)
        message.partitionKey = first.partitionKey
        return len(bodies), message

    def _advance(self):
        while self._pending and self._pending[0].acknowledged:
            entry = self._pending.popleft()
            if entry.checkpoint is not None:
                self.position = entry.checkpoint
        self._save()

    def _save(self):
        if self.position != self._saved and not self._kept():
            self._saved = self.position
            self.state.save(*self.position)

    def _recoverKept(self):
        """
        Push the changes the producer kept locally to the broker (the
        producer also does so on its own, but only every few minutes), and
        save the position once none is left.
        """
        for partition in self._partitions():
            if self.producer.storage.count(self.topic, partition):
                self.producer.recover(self.topic, partition).addErrback(lambda f: None)
        self._save()
        if self._kept() < self.keptLimit:
            self._wakeReader()


def _closeQuietly(source):
    try:
        source.close()
    except Exception:
        pass
