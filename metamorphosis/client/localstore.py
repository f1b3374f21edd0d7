"""
Local storage for messages a producer could not send yet (the ordered
producer's spill, the async producer's overflow; docs/client-producer.md).

Each (topic, partition) has a directory C{<path>/<topic>@<brokerId>-<partition>}
holding C{messages}, the kept messages as MetaQ records (message-format.md:
a 20-byte header with CRC32, then the put body), and C{head}, the byte
offset of the first message not yet re-sent.  The files are private to the
client (as the Java client's are); a record torn by a crash fails its length
or CRC check and ends the file there.

All file work runs in one dedicated thread, in submission order, so an
append is on disk before any later read or truncation of the same key.
"""

import os
import struct

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from metamorphosis.client.interfaces import ILocalMessageStorage
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.logfields import errorText
from metamorphosis.protocol import records

_head = struct.Struct(">q")

MESSAGES = "messages"
HEAD = "head"
READ_BATCH = 1024 * 1024


def _keyName(topic, partition):
    return "%s@%s" % (topic, partition)


def _parseKeyName(name):
    topic, sep, partition = name.rpartition("@")
    if not sep or not topic:
        raise ValueError("Not a local message directory: %r" % (name,))
    return topic, Partition.fromString(partition)


@implementer(ILocalMessageStorage)
class LocalMessageStorage:
    """
    Kept messages under C{path} (created if needed).  Existing messages
    are loaded in the storage thread at construction; L{whenReady} fires
    when they are counted.
    """

    log = Logger()

    def __init__(self, path, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.path = path
        self._counts = {}
        self._heads = {}
        self._locks = {}
        self._pool = ThreadPool(1, 1, name="metaq-localmessages")
        self._pool.start()
        self._closed = False
        self._ready = self._inThread(self._load).addCallback(self._loaded)

    def _inThread(self, function, *args):
        return threads.deferToThreadPool(self.reactor, self._pool, function, *args)

    def _directory(self, topic, partition):
        return os.path.join(self.path, _keyName(topic, partition))

    # -- loading ----------------------------------------------------------

    def _load(self):
        os.makedirs(self.path, exist_ok=True)
        found = {}
        for name in sorted(os.listdir(self.path)):
            try:
                key = _parseKeyName(name)
            except ValueError:
                continue
            directory = os.path.join(self.path, name)
            head = self._readHead(directory)
            count = 0
            position = head
            while True:
                batch, position = self._readRecords(directory, position)
                if not batch:
                    break
                count += len(batch)
            if count:
                found[key] = (count, head)
        return found

    def _loaded(self, found):
        for key, (count, head) in found.items():
            self._counts[key] = self._counts.get(key, 0) + count
            self._heads[key] = head
            self.log.info(
                "{count} kept message(s) for {topic}@{partition}", count=count, topic=key[0], partition=str(key[1])
            )

    def whenReady(self):
        """
        @return: a Deferred that fires once the messages kept by an earlier
            process are counted.
        """
        d = defer.Deferred()
        self._ready.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # -- file work (storage thread) ----------------------------------------

    @staticmethod
    def _readHead(directory):
        try:
            with open(os.path.join(directory, HEAD), "rb") as f:
                return _head.unpack(f.read(_head.size))[0]
        except (OSError, struct.error):
            return 0

    def _readRecords(self, directory, position):
        """
        @return: C{(records, next position)}; the records are complete and
            intact, a torn or corrupt tail ends the list.
        """
        try:
            with open(os.path.join(directory, MESSAGES), "rb") as f:
                f.seek(position)
                buffer = f.read(READ_BATCH)
                if len(buffer) == READ_BATCH:
                    # A record larger than a batch: read it whole.
                    if len(buffer) >= records.HEADER_SIZE:
                        length = records.decodeHeader(buffer)[0]
                        if records.HEADER_SIZE + length > len(buffer):
                            buffer += f.read(records.HEADER_SIZE + length - len(buffer))
        except FileNotFoundError:
            return [], position
        found = []
        consumed = 0
        try:
            for record, consumed in records.iterRecords(buffer):
                found.append(record)
        except records.InvalidRecord as e:
            self.log.error(
                "Corrupt kept message in {directory} at {position}: {error}; the rest is skipped",
                directory=directory,
                position=position + consumed,
                error=errorText(e),
            )
        return found, position + consumed

    def _append(self, topic, partition, record):
        directory = self._directory(topic, partition)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, MESSAGES), "ab") as f:
            f.write(record)

    def _writeHead(self, topic, partition, position):
        with open(os.path.join(self._directory(topic, partition), HEAD), "wb") as f:
            f.write(_head.pack(position))

    def _clear(self, topic, partition):
        directory = self._directory(topic, partition)
        for name in (MESSAGES, HEAD):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(directory)
        except OSError:
            pass

    # -- the interface ----------------------------------------------------

    def append(self, message, partition):
        if self._closed:
            return defer.fail(RuntimeError("Local message storage is closed"))
        key = (message.topic, partition)
        # Counted now, not when written: a replay that sees a non-zero count
        # waits for this append instead of truncating the files under it.
        self._counts[key] = self._counts.get(key, 0) + 1
        body, flag = message.encode()
        record = records.encodeRecord(message.id or 0, flag, body)
        d = self._inThread(self._append, message.topic, partition, record)

        def failed(failure):
            self._counts[key] -= 1
            return failure

        return d.addErrback(failed)

    def count(self, topic, partition):
        return self._counts.get((topic, partition), 0)

    def keys(self):
        return [key for key, count in self._counts.items() if count]

    def replay(self, topic, partition, send):
        key = (topic, partition)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        return lock.run(self._replay, topic, partition, send)

    @defer.inlineCallbacks
    def _replay(self, topic, partition, send):
        yield self._ready
        key = (topic, partition)
        directory = self._directory(topic, partition)
        sent = 0
        while self._counts.get(key, 0) > 0 and not self._closed:
            position = self._heads.get(key, 0)
            batch, _ = yield self._inThread(self._readRecords, directory, position)
            if not batch:
                if self._counts.get(key, 0) > 0 and not (yield self._appendsPending(key)):
                    # Counted messages that are not on disk: a corrupt tail.
                    self.log.error(
                        "Dropping {n} unreadable kept message(s) of {topic}@{partition}",
                        n=self._counts[key],
                        topic=topic,
                        partition=str(partition),
                    )
                    self._counts[key] = 0
                continue
            for record in batch:
                data, attribute = records.decodePayload(record.body, record.flag)
                message = Message(topic, data, attribute, record.id or None)
                try:
                    ok = yield send(message)
                except Exception as e:
                    self.log.warn(
                        "Re-sending kept message of {topic}@{partition} failed: {error}",
                        topic=topic,
                        partition=str(partition),
                        error=errorText(e),
                    )
                    ok = False
                if not ok:
                    return sent
                position += record.size
                self._heads[key] = position
                self._counts[key] -= 1
                sent += 1
                if self._counts[key] == 0:
                    del self._heads[key]
                    yield self._inThread(self._clear, topic, partition)
                    break
                yield self._inThread(self._writeHead, topic, partition, position)
        return sent

    def _appendsPending(self, key):
        # One more round trip through the FIFO thread: everything appended
        # before it is on disk afterwards.
        directory = self._directory(*key)
        position = self._heads.get(key, 0)
        return self._inThread(self._readRecords, directory, position).addCallback(
            lambda result: bool(result[0])
        )

    def close(self):
        """
        Finish the file work queued so far and stop the storage thread.
        """
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        return self._inThread(lambda: None).addBoth(lambda _: self._pool.stop())
