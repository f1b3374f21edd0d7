"""
Small stand-ins for the store manager, for tests of the parts of the broker
above the store: L{FakeStore} only counts, L{FileStore} keeps records in one
real file so that C{get} replies are sent from a file descriptor as with the
real store.
"""

import os
import random

from twisted.internet import defer
from twisted.python.failure import Failure

from metamorphosis.broker.store.errors import IllegalTopic, OffsetBeforeStart, WrongPartition
from metamorphosis.protocol.records import decodeRecords, encodeRecord


class FakeStore:
    readOnly = None
    damaged = ()

    def __init__(self, minOffset=0):
        self.minOffset = minOffset
        self.maxOffset = minOffset
        self.messageCount = 0
        self.sizeInBytes = 0

    def add(self, count, size):
        self.messageCount += count
        self.sizeInBytes += size
        self.maxOffset += size


class FileSlice:
    def __init__(self, fileno, offset, position, length):
        self._fileno = fileno
        self.offset = offset
        self.position = position
        self.length = length

    def fileno(self):
        return self._fileno

    def read(self):
        return os.pread(self._fileno, self.length, self.position)


class FileStore(FakeStore):
    """
    One partition in one file starting at C{minOffset}; appends are
    acknowledged at once unless C{hold} is set, then they wait in
    C{pending}.
    """

    def __init__(self, path, minOffset=0):
        FakeStore.__init__(self, minOffset)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.hold = False
        self.pending = []
        self.failure = None

    def append(self, msgId, flag, body, checksum=None):
        if self.failure is not None:
            return defer.fail(self.failure)
        record = encodeRecord(msgId, flag, body)
        if checksum is not None:
            assert record[4:8] == checksum.to_bytes(4, "big"), "a wrong checksum was given"
        offset = self.maxOffset
        os.pwrite(self.fd, record, offset - self.minOffset)
        self.add(1, len(record))
        if self.hold:
            d = defer.Deferred()
            self.pending.append((d, offset))
            return d
        return defer.succeed(offset)

    def appendThen(self, msgId, flag, body, checksum, stored, failed):
        self.append(msgId, flag, body, checksum).addCallbacks(stored, failed)

    def appendRecordsThen(self, buffer, count, stored, failed):
        if self.failure is not None:
            failed(Failure(self.failure))
            return
        decoded, consumed = decodeRecords(buffer)
        assert (len(decoded), consumed) == (count, len(buffer)), "not %d whole records" % (count,)
        offset = self.maxOffset
        os.pwrite(self.fd, buffer, offset - self.minOffset)
        self.add(count, len(buffer))
        if self.hold:
            d = defer.Deferred()
            self.pending.append((d, offset))
            d.addCallbacks(stored, failed)
            return
        stored(offset)

    def release(self):
        pending, self.pending = self.pending, []
        for d, offset in pending:
            d.callback(offset)

    def slice(self, offset, maxSize):
        if offset < self.minOffset:
            raise OffsetBeforeStart(offset, self.minOffset)
        if offset >= self.maxOffset:
            return None
        return FileSlice(self.fd, offset, offset - self.minOffset,
                         min(maxSize, self.maxOffset - offset))

    def awaitsFlush(self, offset, size):
        return False

    def nearestOffset(self, offset):
        if offset >= self.maxOffset:
            return self.maxOffset
        return self.minOffset

    def close(self):
        os.close(self.fd)


class FakeStoreManager:
    """
    Stores by (topic, partition) with the legality checks of the real
    manager; L{getOrCreateStore} makes L{FileStore}s under C{directory}.
    """

    #: No group commit provider: the journal syncs in its pool.
    fsync = None

    def __init__(self, config=None, directory=None):
        self.config = config
        self.directory = directory
        self._stores = {}
        self.suspected = []

    def suspectDamage(self, store, offset):
        self.suspected.append((store, offset))

    def add(self, topic, partition, store=None):
        store = store or FakeStore()
        self._stores[(topic, partition)] = store
        return store

    def stores(self):
        return [(t, p, s) for (t, p), s in self._stores.items()]

    def getStore(self, topic, partition):
        return self._stores.get((topic, partition))

    def chooseRandomPartition(self, topic):
        return random.randrange(self.config.numPartitionsOf(topic))

    def storeFor(self, topic, partition):
        # Not remembered: tests change the configuration between puts.
        return self.getOrCreateStore(topic, partition)

    def getOrCreateStore(self, topic, partition):
        if not self.config.isLegalTopic(topic):
            raise IllegalTopic(topic)
        if not 0 <= partition < self.config.numPartitionsOf(topic):
            raise WrongPartition(partition)
        store = self._stores.get((topic, partition))
        if store is None:
            path = os.path.join(self.directory, f"{topic}-{partition}")
            store = self.add(topic, partition, FileStore(path))
        return store

    def closeAll(self):
        for store in self._stores.values():
            if isinstance(store, FileStore):
                store.close()
