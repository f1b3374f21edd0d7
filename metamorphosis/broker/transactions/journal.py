"""
The files of the transaction journal under C{<dataLogPath>/transactions/}
(the format is ours; docs/transactions.md describes it byte by byte).

L{RedoLog} appends records to C{redo.<N>} with plain C{pwrite(2)} calls,
so that a record the broker has acted on survives a C{kill -9} of the
process, and forces them to disk in rounds of fsyncs (group commit,
L{metamorphosis.broker.store.syncloop}; the kernel's asynchronous fsync
where it can): every sync requested while one round runs is covered by
the next, and they are answered together.

Ahead of its records the current file holds zeros, written and forced in
a pool thread (C{preallocateSize}, as the partitions do, docs/storage.md):
forcing records written over zeros commits no new file size.  The thread
writes from a position the records do not reach while it runs: a record
that would is written to a new file instead.
L{Checkpoints} and L{HeuristicJournal} hold the small files beside it.
"""

import json
import os
import struct
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from metamorphosis.broker.store.bursts import acknowledging
from metamorphosis.broker.store.fsync import ThreadFsync
from metamorphosis.broker.store.syncloop import SyncLoop
from metamorphosis.broker.store.zeros import cutZeros, writeZeros
from metamorphosis.durable import replaceDurably
from metamorphosis.ratelog import RateLimitedLog

log = Logger()
#: A full disk is the disk's state: one line per interval.
zeroErrors = RateLimitedLog(log)

REDO_PREFIX = "redo."
CHECKPOINT_PREFIX = "checkpoint."
HEURISTIC_FILE = "heuristic.log"
DEFAULT_FILE_SIZE = 64 * 1024 * 1024

_FRAME = struct.Struct(">II")


class JournalLocation(NamedTuple):
    """
    A record's place: the redo file number and the offset of its frame.
    """

    number: int
    offset: int


class JournalError(Exception):
    """
    A record that cannot be decoded.
    """


# Record types (the first byte of a record's payload).
PUT, PREPARE, COMMIT, DONE, ROLLBACK = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class PutRecord:
    key: str
    msgId: int
    topic: str
    partition: int
    flag: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PrepareRecord:
    key: str


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """
    A commit about to be appended: for each partition, in append order, the
    partition's end offset before the append, from where recovery looks for
    the transaction's messages.
    """

    key: str
    wasPrepared: bool
    partitions: tuple  # ((topic, partition, startOffset), ...)


@dataclass(frozen=True, slots=True)
class DoneRecord:
    """
    Every partition of a committed transaction holds its messages.
    """

    key: str


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    key: str


def _string(value):
    raw = value.encode("utf-8")
    return _LENGTH.pack(len(raw)) + raw


_LENGTH = struct.Struct(">H")
_KEYED = struct.Struct(">BH")
_PUT_ID = struct.Struct(">qH")
_PUT_TAIL = struct.Struct(">iiI")
_COMMIT_HEAD = struct.Struct(">BH")
_COMMIT_PARTITION = struct.Struct(">iq")
_KINDS = {PrepareRecord: PREPARE, DoneRecord: DONE, RollbackRecord: ROLLBACK}


class _Reader:
    def __init__(self, payload):
        self.payload = payload
        self.position = 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.payload, self.position)
        self.position += struct.calcsize(fmt)
        return values

    def string(self):
        (length,) = self.take(">H")
        return self.raw(length).decode("utf-8")

    def raw(self, length):
        value = self.payload[self.position : self.position + length]
        if len(value) != length:
            raise JournalError("truncated record")
        self.position += length
        return bytes(value)


def encodeRecord(record):
    """
    The bytes of one record: C{uint32 length}, C{uint32 crc32(payload)},
    payload.  (The payload is assembled only once: a put's data is copied a
    single time.  A one-message transaction writes three records, so each
    is packed with as few steps as its layout allows.)
    """
    key = record.key.encode("utf-8")
    kind = type(record)
    if kind is PutRecord:
        topic = record.topic.encode("utf-8")
        data = record.data
        head = b"".join((
            _KEYED.pack(PUT, len(key)), key, _PUT_ID.pack(record.msgId, len(topic)), topic,
            _PUT_TAIL.pack(record.partition, record.flag, len(data))))
        return b"".join((_FRAME.pack(len(head) + len(data), zlib.crc32(data, zlib.crc32(head))),
                         head, data))
    if kind is CommitRecord:
        parts = [_KEYED.pack(COMMIT, len(key)), key,
                 _COMMIT_HEAD.pack(record.wasPrepared, len(record.partitions))]
        for topic, partition, offset in record.partitions:
            parts += [_string(topic), _COMMIT_PARTITION.pack(partition, offset)]
        payload = b"".join(parts)
    else:
        payload = _KEYED.pack(_KINDS[kind], len(key)) + key
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decodePayload(payload):
    """
    The record a verified payload holds; L{JournalError} if it is not one.
    """
    try:
        reader = _Reader(payload)
        (kind,) = reader.take(">B")
        key = reader.string()
        if kind == PUT:
            (msgId,) = reader.take(">q")
            topic = reader.string()
            partition, flag, length = reader.take(">iiI")
            record = PutRecord(key, msgId, topic, partition, flag, reader.raw(length))
        elif kind == COMMIT:
            wasPrepared, count = reader.take(">BH")
            partitions = []
            for _ in range(count):
                topic = reader.string()
                partition, offset = reader.take(">iq")
                partitions.append((topic, partition, offset))
            record = CommitRecord(key, bool(wasPrepared), tuple(partitions))
        elif kind in (PREPARE, DONE, ROLLBACK):
            record = {PREPARE: PrepareRecord, DONE: DoneRecord, ROLLBACK: RollbackRecord}[
                kind
            ](key)
        else:
            raise JournalError("unknown record type %d" % (kind,))
    except (struct.error, UnicodeDecodeError) as e:
        raise JournalError(str(e)) from e
    if reader.position != len(payload):
        raise JournalError("trailing bytes in record")
    return record


def decodeRecords(buffer):
    """
    The records at the start of C{buffer} as C{[(offset, record)]}, and the
    offset where the valid records end (a torn or corrupt tail stops it).
    """
    records = []
    position = 0
    while position + _FRAME.size <= len(buffer):
        length, crc = _FRAME.unpack_from(buffer, position)
        start = position + _FRAME.size
        payload = buffer[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            record = decodePayload(payload)
        except JournalError:
            break
        records.append((position, record))
        position = start + length
    return records, position


class _RedoFile:
    """
    One open C{redo.<N>}.

    @ivar size: where its records end (the next one goes there).
    @ivar zeroed: how far the file reaches (zeros after C{size}).
    @ivar filling: while zeros are written in a thread, the position they
        start at, which no record may reach meanwhile; else L{None}.
    """

    def __init__(self, path, number, size=None):
        self.path = path
        self.number = number
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.zeroed = os.fstat(self.fd).st_size
        self.size = self.zeroed if size is None else size
        self.retired = False
        self.filling = None


def _fillZeros(path, start, end):
    """
    Write zeros to C{path} from C{start} to C{end} and force them.
    Blocking: in a thread.  On failure (a full disk) they are cut again.

    Through a descriptor of its own: an error that the kernel reports to
    this C{fdatasync} is reported to the journal's own descriptor too, at
    the fsync of its next round, and fails the requests that round covers.
    A shared descriptor would see it only once, here.

    @return: the L{OSError}, or L{None}.
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e
    try:
        writeZeros(fd, start, end)
        os.fdatasync(fd)
    except OSError as e:
        return e
    finally:
        os.close(fd)
    return None


class RedoLog:
    """
    The sequence of C{redo.<N>} files.

    @ivar fileSize: a record that starts beyond this many bytes goes to a new
        file.
    @ivar preallocate: bytes of zeros kept ahead of the records; 0 for none.
    @param firing: a context manager entered while the syncs one fsync
        covers are answered (see L{SyncLoop}).
    """

    def __init__(self, directory, reactor, threadPool, fileSize=DEFAULT_FILE_SIZE,
                 firing=None, preallocate=0):
        self.directory = directory
        self.fileSize = fileSize
        self.preallocate = preallocate
        self._reactor = reactor
        self._threadPool = threadPool
        # The zero writes running in threads.
        self._fills = set()
        self._current = None
        # The files written since the last fsync round took them.
        self._dirty = {}
        self._firing = firing
        # While a round is answered: the DONE records held back.
        self._held = None
        self._syncLoop = SyncLoop(ThreadFsync(reactor, threadPool), self._takeDirty,
                                  self._answering)

    def useFsync(self, fsync):
        """
        Force the journal with C{fsync} (an
        L{metamorphosis.broker.store.interfaces.IFsync}: the store
        manager's, the kernel's asynchronous fsync where it can) instead of
        a pool thread; before the first L{sync}.
        """
        self._syncLoop.fsync = fsync

    def numbers(self):
        """
        The numbers of the existing redo files, ascending.
        """
        numbers = []
        for name in os.listdir(self.directory):
            if name.startswith(REDO_PREFIX) and name[len(REDO_PREFIX) :].isdigit():
                numbers.append(int(name[len(REDO_PREFIX) :]))
        return sorted(numbers)

    def _path(self, number):
        return os.path.join(self.directory, REDO_PREFIX + str(number))

    def recover(self, start=None):
        """
        Read every valid record from C{start} (a L{JournalLocation}, or the
        beginning) on, truncating each file after its last valid record, and
        open the newest file for appending.  Blocking: run it in a thread.

        @return: C{[(JournalLocation, record)]} in journal order.
        """
        found = []
        numbers = self.numbers()
        size = None
        for number in numbers:
            if start is not None and number < start.number:
                continue
            offset = start.offset if start is not None and number == start.number else 0
            path = self._path(number)
            with open(path, "rb") as f:
                f.seek(offset)
                buffer = f.read()
            records, end = decodeRecords(buffer)
            found += [(JournalLocation(number, offset + at), r) for at, r in records]
            size = offset + end
            if end != len(buffer) and not any(buffer[end:]):
                pass  # the zeros written ahead of the records
            elif end != len(buffer):
                log.warn(
                    "Truncating transaction journal {path} at {offset} (torn or corrupt record)",
                    path=path,
                    offset=offset + end,
                )
                os.truncate(path, offset + end)
        self._current = _RedoFile(
            self._path(numbers[-1] if numbers else 1), numbers[-1] if numbers else 1, size
        )
        return found

    @property
    def position(self):
        """
        Where the next record will be written.
        """
        return JournalLocation(self._current.number, self._current.size)

    def append(self, record):
        """
        Write one record now (it survives the process from this moment) and
        return its L{JournalLocation}.
        """
        return self._write(encodeRecord(record))

    def appendDone(self, record):
        """
        Journal a DONE record, whose loss recovery repairs (it looks for a
        commit's messages in the partitions).  The commits one fsync round
        answers write theirs together, in one write at the end of the
        round, and so do those one fsync of a partition covers (a store
        tells them inside its C{acknowledging} burst); a failed write is
        logged, not raised: the commit it closes is durable and applied.
        """
        data = encodeRecord(record)
        if self._held is None and acknowledging.depth:
            self._held = []
            acknowledging.later(self._writeHeld)
        if self._held is not None:
            self._held.append(data)
        else:
            self._writeDone([data])

    @contextmanager
    def _answering(self):
        if self._held is not None:
            # A round answered inside another (only where the loop runs
            # on the reactor's own thread, in tests): the outer one writes.
            yield
            return
        self._held = []
        try:
            with self._firing if self._firing is not None else nullcontext():
                yield
        finally:
            self._writeHeld()

    def _writeHeld(self):
        held, self._held = self._held, None
        if held:
            self._writeDone(held)

    def _writeDone(self, records):
        try:
            self._write(b"".join(records))
        except OSError as e:
            log.error(
                "Writing {count} DONE record(s) to the transaction journal failed: {error}; "
                "recovery will check those commits in their partitions",
                count=len(records), error=str(e))

    def _write(self, data):
        current = self._current
        if current.size >= self.fileSize or (
                current.filling is not None and current.size + len(data) > current.filling):
            self._rotate()
            current = self._current
        location = JournalLocation(current.number, current.size)
        view = memoryview(data)
        position = current.size
        try:
            while view:
                written = os.pwrite(current.fd, view, position)
                view = view[written:]
                position += written
        except OSError:
            # A full disk may take part of the record: remove it (and the
            # zeros after it), or every record appended after it would be
            # unreadable at recovery.
            try:
                os.ftruncate(current.fd, current.size)
                current.zeroed = current.size
            except OSError:
                pass
            raise
        current.size += len(data)
        self._dirty[current.number] = current
        if self.preallocate and current.size + self.preallocate // 2 > current.zeroed:
            self._fill(current)
        return location

    def _fill(self, current):
        """
        Write zeros ahead of the records of C{current} in a thread, from
        half a C{preallocate} past its records on: what is written before
        they are done goes there, or to a new file (L{_write}).
        """
        if current.filling is not None or current.size >= self.fileSize:
            return
        start = max(current.zeroed, current.size + self.preallocate // 2)
        end = start + self.preallocate
        current.filling = start
        d = deferToThreadPool(self._reactor, self._threadPool, _fillZeros, current.path, start,
                              end)
        self._fills.add(d)

        def filled(error):
            self._fills.discard(d)
            current.filling = None
            # Also after a failure: the next try is half a tail later.
            current.zeroed = end
            if error is not None:
                zeroErrors.error(
                    "journal-zeros", "Writing zeros ahead of the records of {path} failed; "
                    "the journal goes on without them: {error}", path=current.path,
                    error=str(error))

        d.addCallback(filled)
        d.addErrback(lambda failure: log.failure("Writing zeros to {path} failed", failure,
                                                 path=current.path))

    def stopFilling(self):
        """
        A Deferred firing once no zeros are being written (before L{close}).
        """
        return DeferredList(list(self._fills), consumeErrors=True)

    def _rotate(self):
        """
        Start the next file.  The old one is closed by the fsync round that
        forces its last records (one may be running right now, so it cannot
        be closed here).
        """
        old = self._current
        old.retired = True
        self._dirty[old.number] = old
        self._current = _RedoFile(self._path(old.number + 1), old.number + 1)
        self.sync().addErrback(
            lambda f: log.failure("Forcing {path} failed", f, path=old.path)
        )

    def sync(self):
        """
        Force every record written so far to disk.

        @return: a Deferred that fires once they are; syncs requested while
            an C{fsync} runs share the next one.
        """
        return self._syncLoop.request()

    def syncThen(self, done):
        """
        L{sync} without a Deferred: C{done} is called with L{None} once the
        records are forced, or with the L{Failure} of the fsync that
        covered them.
        """
        self._syncLoop.requestThen(done)

    def _takeDirty(self):
        """
        A round starts: it forces the files written so far, and closes the
        retired ones among them once their fsyncs are over (a file retired
        after this is closed by the next round).
        """
        files, self._dirty = list(self._dirty.values()), {}
        closing = [f for f in files if f.retired]

        def closeRetired(error):
            for f in closing:
                os.close(f.fd)

        return [f.fd for f in files], closeRetired

    def stopSyncing(self):
        """
        Stop the fsync loop (before L{close}).

        @return: a Deferred firing once every sync requested is answered.
        """
        return self._syncLoop.stop()

    @property
    def dirty(self):
        """
        Whether records were written since the last fsync round took them.
        """
        return bool(self._dirty)

    def deleteBefore(self, number):
        """
        Remove the redo files numbered below C{number} (a checkpoint made
        them useless).
        """
        for old in self.numbers():
            if old < number and old != self._current.number:
                os.unlink(self._path(old))

    def close(self):
        """
        Cut the zeros after the records of the files still open, force and
        close them: a stopped broker's journal ends at its last record.
        Blocking: run it in a thread, once L{stopSyncing} and
        L{stopFilling} have fired.
        """
        for f in self._dirty.values():
            if f is not self._current:
                cutZeros(f.fd, f.size)
                os.fsync(f.fd)
                os.close(f.fd)
        if self._current is not None:
            cutZeros(self._current.fd, self._current.size)
            os.fsync(self._current.fd)
            os.close(self._current.fd)
            self._current = None


class Checkpoints:
    """
    The C{checkpoint.<N>} files: each holds C{{"number":…,"offset":…}}, the
    journal location from which recovery must replay.
    """

    def __init__(self, directory, maxCheckpoints=3):
        self.directory = directory
        self.maxCheckpoints = max(1, maxCheckpoints)

    def _numbers(self):
        return sorted(
            int(name[len(CHECKPOINT_PREFIX) :])
            for name in os.listdir(self.directory)
            if name.startswith(CHECKPOINT_PREFIX)
            and name[len(CHECKPOINT_PREFIX) :].isdigit()
        )

    def latest(self):
        """
        The newest readable checkpoint, or L{None}.  Blocking.
        """
        for number in reversed(self._numbers()):
            path = os.path.join(self.directory, CHECKPOINT_PREFIX + str(number))
            try:
                with open(path, "rb") as f:
                    value = json.loads(f.read())
                return JournalLocation(int(value["number"]), int(value["offset"]))
            except (OSError, ValueError, KeyError, TypeError):
                log.warn("Ignoring unreadable checkpoint {path}", path=path)
        return None

    def write(self, location):
        """
        Write a new checkpoint file durably and drop the oldest beyond
        C{maxCheckpoints}.  Blocking: run it in a thread.
        """
        numbers = self._numbers()
        number = (numbers[-1] + 1) if numbers else 1
        replaceDurably(
            os.path.join(self.directory, CHECKPOINT_PREFIX + str(number)),
            json.dumps({"number": location.number, "offset": location.offset}).encode(),
        )
        for old in (numbers + [number])[: -self.maxCheckpoints]:
            os.unlink(os.path.join(self.directory, CHECKPOINT_PREFIX + str(old)))


class HeuristicJournal:
    """
    C{heuristic.log}: the heuristically completed XA transactions, as a JSON
    list of C{{"key", "uniqueQualifier", "state"}}, replaced atomically on
    every change.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, HEURISTIC_FILE)
        self.directory = directory

    def load(self):
        """
        C{[(key, uniqueQualifier, state)]}.  Blocking.
        """
        try:
            with open(self.path, "rb") as f:
                entries = json.loads(f.read() or b"[]")
        except FileNotFoundError:
            return []
        return [(e["key"], e["uniqueQualifier"], int(e["state"])) for e in entries]

    def save(self, entries):
        """
        Replace the journal with C{entries}.  Blocking: run it in a thread.
        """
        replaceDurably(
            self.path,
            json.dumps(
                [{"key": k, "uniqueQualifier": q, "state": int(s)} for k, q, s in entries]
            ).encode(),
        )
