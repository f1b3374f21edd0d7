"""
Local recovery of messages a listener could not process (docs/client-consumer.md, Java's C{RecoverStorageManager}).

After C{maxFetchRetries} failed rounds the consumer hands the blocking
message to the L{RecoverManager} and moves on; the message is written to
an append-only log of its C{<topic>@<group>} under the recovery directory
(and fsynced) I{before} the consumer's offset moves past it, so nothing is
lost.  A background task offers the kept messages to the listener again
every C{interval} seconds, and deletes each one (a delete record, fsynced)
as soon as the listener returns normally, so a message that was processed
once is not offered again.  Stores are reopened at start-up.

The Java client keeps these in store4j journals of Java-serialized
messages; they are private to one process, so this client uses its own
simpler format: a sequence of entries C{op (1 byte: 1 add, 2 delete),
key (8 bytes), length (4 bytes), CRC32 of the payload (4 bytes), payload},
an add's payload being the partition string (2-byte length + UTF-8)
followed by the message as a stored record.  A torn final entry (a crash
mid-write) is cut off when the store is opened.
"""

import os
import struct
import types
import zlib
from collections import OrderedDict

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from metamorphosis.client.fetch import ReceivedMessage
from metamorphosis.client.partition import Partition
from metamorphosis.durable import replaceDurably
from metamorphosis.protocol import records

ADD, DELETE = 1, 2
_entry = struct.Struct(">BqII")
_short = struct.Struct(">H")


def defaultRecoverPath():
    """
    Java's default, C{${meta.recover.path:-~/.meta_recover}}.
    """
    return os.environ.get("META_RECOVER_PATH") or os.path.join(
        os.path.expanduser("~"), ".meta_recover")


class RecoverStore:
    """
    The kept messages of one (topic, group), in insertion order.  Its
    methods are blocking and run in threads, one at a time (the manager
    serializes them with a lock per store).
    """

    def __init__(self, directory, topic, group):
        self.topic = topic
        self.group = group
        self.name = "%s@%s" % (topic, group)
        self.directory = os.path.join(directory, self.name)
        self.path = os.path.join(self.directory, self.name + ".log")
        self.entries = OrderedDict()
        self.dead = 0
        self._nextKey = 0
        self._file = None

    def open(self):
        os.makedirs(self.directory, exist_ok=True)
        good = 0
        try:
            with open(self.path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            content = b""
        position = 0
        while len(content) - position >= _entry.size:
            op, key, length, crc = _entry.unpack_from(content, position)
            end = position + _entry.size + length
            payload = content[position + _entry.size:end]
            if end > len(content) or zlib.crc32(payload) != crc or op not in (ADD, DELETE):
                break
            if op == ADD:
                self.entries[key] = self._decode(payload)
            elif self.entries.pop(key, None) is not None:
                self.dead += 1
            self._nextKey = max(self._nextKey, key + 1)
            position = good = end
        if good != len(content) or (self.dead and not self.entries):
            self._rewrite()
        else:
            self._file = open(self.path, "ab")

    def _decode(self, payload):
        (size,) = _short.unpack_from(payload)
        partition = Partition.fromString(payload[2:2 + size].decode("utf-8"))
        (record,), _ = records.decodeRecords(payload[2 + size:])
        return partition, record

    def _rewrite(self):
        """
        Write only the live entries, to a new file renamed over the log.
        """
        if self._file is not None:
            self._file.close()
        replaceDurably(self.path, b"".join(
            self._add(key, partition, record) for key, (partition, record) in self.entries.items()))
        self.dead = 0
        self._file = open(self.path, "ab")

    def _add(self, key, partition, record):
        name = str(partition).encode("utf-8")
        payload = _short.pack(len(name)) + name + record.encode()
        return _entry.pack(ADD, key, len(payload), zlib.crc32(payload)) + payload

    def _write(self, data):
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, partition, record):
        key = self._nextKey
        self._nextKey += 1
        self._write(self._add(key, partition, record))
        self.entries[key] = (partition, record)
        return key

    def delete(self, key):
        if self.entries.pop(key, None) is None:
            return
        self._write(_entry.pack(DELETE, key, 0, zlib.crc32(b"")))
        self.dead += 1
        if not self.entries or self.dead > 1000:
            self._rewrite()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class RecoverManager:
    """
    Keeps and replays the messages of every (topic, group) of a process.

    @param path: the recovery directory.
    @param interval: seconds between replays
        (C{recoverMessageIntervalInMills}, 5 minutes).
    @param firstDelay: seconds before the first replay after L{start} (5).
    """

    log = Logger()

    def __init__(self, path=None, interval=300.0, firstDelay=5.0, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.path = path or defaultRecoverPath()
        self.interval = interval
        self.firstDelay = firstDelay
        self.reactor = reactor
        self._stores = {}
        self._locks = {}
        self._listeners = {}
        self._loop = None
        self._first = None
        self._replaying = None

    def register(self, topic, group, listener):
        """
        Replay the kept messages of (C{topic}, C{group}) to C{listener}
        (an L{IMessageListener}).
        """
        self._listeners[(topic, group)] = listener

    def unregister(self, topic, group):
        self._listeners.pop((topic, group), None)

    def start(self):
        """
        Reopen the stores of the registered (topic, group) pairs that have
        kept messages, and schedule the replays.  Stores of other pairs
        are left alone: another process (or consumer) may own them.
        """
        return defer.ensureDeferred(self._start())

    async def _start(self):
        if self._loop is not None:
            return
        loop = self._loop = task.LoopingCall(self.replay)
        loop.clock = self.reactor
        existing = await threads.deferToThread(self._existing)
        for topic, group in list(self._listeners):
            if self._loop is not loop:
                return
            if "%s@%s" % (topic, group) in existing:
                await self._store(topic, group)
        # L{stop} may have come while we read the directory: then nothing
        # is scheduled, or it would outlive the manager.
        if self._loop is loop:
            self._first = self.reactor.callLater(self.firstDelay, self._startLoop)

    def _startLoop(self):
        self._first = None
        self._loop.start(self.interval).addErrback(
            lambda f: self.log.failure("Local recovery stopped", f))

    def _existing(self):
        try:
            return set(os.listdir(self.path))
        except FileNotFoundError:
            return set()

    async def _store(self, topic, group):
        key = (topic, group)
        if key not in self._locks:
            self._locks[key] = defer.DeferredLock()
        lock = self._locks[key]
        await lock.acquire()
        try:
            if key not in self._stores:
                store = RecoverStore(self.path, topic, group)
                await threads.deferToThread(store.open)
                self._stores[key] = store
        finally:
            lock.release()
        return self._stores[key]

    def append(self, group, message):
        """
        Keep C{message} (with its C{topic}, C{partition}, C{id}) for
        C{group}.

        @return: a Deferred firing once it is on disk.
        """
        return defer.ensureDeferred(self._append(group, message))

    async def _append(self, group, message):
        store = await self._store(message.topic, group)
        body, flag = records.encodePayload(message.data, message.attribute)
        record = records.Record(message.id, flag, body)
        await self._locks[(message.topic, group)].run(
            threads.deferToThread, store.append, message.partition, record)

    def pending(self, topic, group):
        """
        How many messages are kept for (C{topic}, C{group}).
        """
        store = self._stores.get((topic, group))
        return len(store.entries) if store is not None else 0

    def replay(self):
        """
        Offer every kept message to its listener once, in order; delete
        those it processed.

        @return: a Deferred firing when the round is over.
        """
        if self._replaying is None:
            self._replaying = defer.ensureDeferred(self._replay())

            def done(result):
                self._replaying = None
                return result
            self._replaying.addBoth(done)
        return self._replaying

    async def _replay(self):
        for (topic, group), store in list(self._stores.items()):
            listener = self._listeners.get((topic, group))
            if listener is None:
                continue
            for key, (partition, record) in list(store.entries.items()):
                message = ReceivedMessage(topic, record.data, record.attribute, record.id,
                                          partition, _recoveredContext())
                try:
                    await defer.maybeDeferred(listener.receiveMessages, message)
                except Exception:
                    self.log.failure("Recovered message {id} of {store} failed again; kept",
                                     id=record.id, store=store.name)
                    continue
                await self._locks[(topic, group)].run(threads.deferToThread, store.delete, key)

    def stop(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._replaying is not None:
            await self._replaying
        for key, store in list(self._stores.items()):
            await self._locks[key].run(threads.deferToThread, store.close)
        self._stores.clear()


def _recoveredContext():
    """
    The acknowledgement state a recovered message carries: always
    automatic, since it is deleted from the store once processed.
    """
    return types.SimpleNamespace(autoAck=True, acked=False, rolledBack=False)


class DropPolicy:
    """
    The alternative to local recovery (Java's C{DropPolicy}): a message
    the listener keeps failing on is logged and dropped.
    """

    log = Logger()

    def register(self, topic, group, listener):
        pass

    def unregister(self, topic, group):
        pass

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def append(self, group, message):
        self.log.warn("Dropping message {id} of {topic} for group {group}: its listener "
                      "keeps failing", id=message.id, topic=message.topic, group=group)
        return defer.succeed(None)
