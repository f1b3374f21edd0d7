"""
An in-memory message store manager with the contract of
L{metamorphosis.broker.store} (getOrCreateStore, appendBatch, slice, …), for
unit tests of the transaction layer that do not need files.
"""

from twisted.internet.defer import succeed

from metamorphosis.protocol.records import decodeRecords, encodeRecord


class MemorySlice:
    def __init__(self, offset, data):
        self.offset = offset
        self.length = len(data)
        self._data = data

    def read(self):
        return self._data


class MemoryStore:
    def __init__(self):
        self.buffer = bytearray()
        self.minOffset = 0

    @property
    def maxOffset(self):
        return len(self.buffer)

    #: Its memory is "flushed" at once (L{whenFlushed}).
    groupCommit = False

    def appendBatch(self, batch, durable=True):
        offset = len(self.buffer)
        for msgId, flag, body in batch:
            self.buffer += encodeRecord(msgId, flag, body)
        return succeed(offset)

    def appendBatchThen(self, batch, durable, stored, failed):
        self.appendBatch(batch, durable).addCallbacks(stored, failed)

    def whenFlushed(self, end):
        return succeed(None)

    def whenFlushedThen(self, end, flushed, failed):
        flushed(None)

    def slice(self, offset, maxSize):
        if offset >= len(self.buffer):
            return None
        return MemorySlice(offset, bytes(self.buffer[offset : offset + maxSize]))

    def records(self):
        return decodeRecords(bytes(self.buffer))[0]

    def flush(self):
        return succeed(None)


class MemoryStoreManager:
    #: No group commit provider: the journal syncs in its pool.
    fsync = None

    def __init__(self):
        self._stores = {}

    def getOrCreateStore(self, topic, partition):
        return self._stores.setdefault((topic, partition), MemoryStore())

    storeFor = getOrCreateStore

    def getStore(self, topic, partition):
        return self._stores.get((topic, partition))

    def stores(self):
        return [(t, p, s) for (t, p), s in self._stores.items()]


class SyncThreadPool:
    """
    Runs "threaded" work at once, so that tests with a fake clock stay
    deterministic (used with L{twisted.internet.threads.deferToThreadPool}).
    """

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            from twisted.python.failure import Failure

            onResult(False, Failure())
        else:
            onResult(True, result)


class ManualThreadPool(SyncThreadPool):
    """
    Holds "threaded" work until the test runs it with L{runOne}, so that
    the reactor side can act while a job is in flight.
    """

    def __init__(self):
        self.pending = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.pending.append((onResult, f, args, kwargs))

    def runOne(self):
        onResult, f, args, kwargs = self.pending.pop(0)
        SyncThreadPool.callInThreadWithCallback(self, onResult, f, *args, **kwargs)


class ImmediateReactor:
    """
    A clock whose C{callFromThread} runs at once (paired with
    L{SyncThreadPool}).
    """

    def __init__(self, clock):
        self._clock = clock

    def __getattr__(self, name):
        return getattr(self._clock, name)

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)
