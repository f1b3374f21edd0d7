"""
Where a consumer group keeps the next offset to fetch of each partition it
consumes (docs/client-consumer.md, docs/zookeeper.md).

Three storages provide L{IOffsetStorage}: ZooKeeper (the default, Java's
exact C{<msgId>-<offset>} znodes), a local JSON file (Java's
C{LocalOffsetStorage} format, used by broadcast consumers) and any SQL
database with a DB-API driver (Java's C{MysqlOffsetStorage} table).  Each
commit writes every modified offset in one batch; L{OffsetCommitter} runs the
periodic commits and folds commits requested while one is running into the
next batch, so a slow database sees one write per interval, not one per call.
All blocking I/O runs in threads.
"""

import itertools
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from kazoo.exceptions import NodeExistsError, NoNodeError
from twisted.enterprise import adbapi
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.client.interfaces import IOffsetStorage
from metamorphosis.client.partition import Partition
from metamorphosis.logfields import errorText


@dataclass
class PartitionOffset:
    """
    The consumption state of one partition for one group (Java's
    C{TopicPartitionRegInfo}).

    @ivar offset: the next byte offset to fetch.
    @ivar messageId: the id of the last message consumed, -1 if none yet.
    @ivar modified: whether the offset changed since the last commit.
    """

    topic: str
    partition: Partition
    offset: int
    messageId: int = -1
    modified: bool = False

    def advance(self, offset, messageId):
        self.offset = offset
        self.messageId = messageId
        self.modified = True


def takeModified(offsets):
    """
    Snapshot the modified offsets and mark them clean, in the reactor
    thread, so that consumption may go on while the batch is written.
    """
    batch = [(o, o.offset, o.messageId) for o in offsets if o.modified]
    for o, _, _ in batch:
        o.modified = False
    return batch


def remarkModified(failure, batch):
    for o, _, _ in batch:
        o.modified = True
    return failure


def parseZooKeeperOffset(data):
    """
    Parse the data of an offsets znode: C{<msgId>-<offset>}, split at the
    last C{-}, or a bare offset as written by clients before 1.4.

    @return: C{(messageId, offset)}, messageId -1 for the old format.
    """
    index = data.rfind("-")
    if index > 0:
        return int(data[:index]), int(data[index + 1:])
    return -1, int(data)


@implementer(IOffsetStorage)
class ZooKeeperOffsetStorage:
    """
    Offsets in C{<root>/consumers/<group>/offsets/<topic>/<partition>}.

    @param client: a started C{kazoo.client.KazooClient}.
    """

    log = Logger()

    def __init__(self, client, root="/meta"):
        self.client = client
        self.root = root.rstrip("/")

    def _path(self, group, topic, partition):
        return "%s/consumers/%s/offsets/%s/%s" % (self.root, group, topic, partition)

    def load(self, topic, group, partition):
        def read():
            try:
                data, _ = self.client.get(self._path(group, topic, partition))
            except NoNodeError:
                return None
            if not data:
                return None
            try:
                messageId, offset = parseZooKeeperOffset(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.log.error("Ignoring unreadable offset {data!r} of {group} {topic}/"
                               "{partition}", data=data, group=group, topic=topic,
                               partition=str(partition))
                return None
            return PartitionOffset(topic, partition, offset, messageId)
        return threads.deferToThread(read)

    def initOffset(self, topic, group, partition, offset):
        return defer.succeed(None)

    def commitOffset(self, group, offsets):
        batch = takeModified(offsets)
        if not batch:
            return defer.succeed(None)

        def write():
            for info, offset, messageId in batch:
                self._update(self._path(group, info.topic, info.partition),
                             ("%d-%d" % (messageId, offset)).encode("utf-8"))
        d = threads.deferToThread(write)
        d.addErrback(remarkModified, batch)
        return d

    def _update(self, path, data):
        # ZkUtils.updatePersistentPath: set, or create with parents.
        try:
            self.client.set(path, data)
        except NoNodeError:
            try:
                self.client.create(path, data, makepath=True)
            except NodeExistsError:
                self.client.set(path, data)

    def close(self):
        return defer.succeed(None)


def defaultOffsetsPath():
    """
    Java's default C{LocalOffsetStorage} file, C{~/.meta_offsets}.
    """
    return os.path.join(os.path.expanduser("~"), ".meta_offsets")


_fileLocks = {}
_temporaryNumbers = itertools.count(1)


def _fileLock(path):
    """
    One lock per offsets file, shared by every storage of this process
    using it (broadcast consumers all default to C{~/.meta_offsets}).
    """
    return _fileLocks.setdefault(os.path.abspath(path), defer.DeferredLock())


@implementer(IOffsetStorage)
class LocalOffsetStorage:
    """
    All groups' offsets in one JSON file, rewritten whole at each commit
    through a temporary file renamed over it, in the format Java reads and
    writes:
    C{{"<group>":[{"topic":..,"partition":{"brokerId":..,"partition":..},
    "offset":..,"messageId":..,"modified":..}, ..], ..}}.

    Unlike Java's, every load and commit reads the file afresh and a
    commit merges into it, so several storages (consumers) of a process
    share one file without overwriting each other's groups, offsets of
    partitions a consumer no longer owns are kept, and the message id is
    read back.
    """

    log = Logger()

    def __init__(self, path=None):
        self.path = path or defaultOffsetsPath()
        self._lock = _fileLock(self.path)

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        if not text.strip():
            return {}
        groups = {}
        for group, entries in json.loads(text).items():
            table = groups[group] = {}
            for entry in entries or ():
                part = entry["partition"]
                partition = Partition(int(part["brokerId"]), int(part["partition"]))
                messageId = entry.get("messageId")
                table[(entry["topic"], partition)] = (
                    int(str(entry["offset"])),
                    -1 if messageId is None else int(str(messageId)))
        return groups

    @defer.inlineCallbacks
    def _groups(self):
        try:
            groups = yield self._lock.run(threads.deferToThread, self._read)
        except (ValueError, KeyError, TypeError) as e:
            self.log.error("Ignoring unreadable offsets file {path}: {error}",
                           path=self.path, error=errorText(e))
            groups = {}
        return groups

    @defer.inlineCallbacks
    def load(self, topic, group, partition):
        groups = yield self._groups()
        found = groups.get(group, {}).get((topic, partition))
        if found is None:
            return None
        offset, messageId = found
        return PartitionOffset(topic, partition, offset, messageId)

    def initOffset(self, topic, group, partition, offset):
        return defer.succeed(None)

    @defer.inlineCallbacks
    def commitOffset(self, group, offsets):
        batch = takeModified(offsets)
        if not batch:
            return
        entries = [(info.topic, info.partition, offset, messageId)
                   for info, offset, messageId in batch]
        try:
            unreadable = yield self._lock.run(threads.deferToThread, self._merge, group, entries)
        except BaseException:
            remarkModified(None, batch)
            raise
        if unreadable is not None:
            self.log.error("Replaced unreadable offsets file {path} ({error})",
                           path=self.path, error=errorText(unreadable))

    def _merge(self, group, entries):
        """
        Read the file, set C{entries} of C{group}, write it back (in a
        thread, under the file's lock).

        @return: the reason the old file could not be read, if so.
        """
        unreadable = None
        try:
            groups = self._read()
        except (ValueError, KeyError, TypeError) as e:
            groups, unreadable = {}, e
        table = groups.setdefault(group, {})
        for topic, partition, offset, messageId in entries:
            table[(topic, partition)] = (offset, messageId)
        self._write(self._render(groups))
        return unreadable

    def _render(self, groups):
        return json.dumps({
            group: [{"topic": topic,
                     "partition": {"brokerId": p.brokerId, "partition": p.partition},
                     "offset": offset, "messageId": messageId, "modified": False}
                    for (topic, p), (offset, messageId) in table.items()]
            for group, table in groups.items()})

    def _write(self, text):
        temporary = "%s.tmp.%d" % (self.path, next(_temporaryNumbers))
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def close(self):
        return defer.succeed(None)


DEFAULT_TABLE = "meta_topic_partition_group_offset"

_DDL = {
    "mysql": [
        "CREATE TABLE IF NOT EXISTS {t} ("
        "{id} BIGINT NOT NULL AUTO_INCREMENT, {topic} VARCHAR(255) NOT NULL, "
        "{partition} VARCHAR(255) NOT NULL, {group_id} VARCHAR(255) NOT NULL, "
        "{offset} BIGINT NOT NULL, {msg_id} BIGINT NOT NULL, PRIMARY KEY ({id}), "
        "KEY {idx} ({topic},{partition},{group_id})) ENGINE=InnoDB DEFAULT CHARSET=utf8"],
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS {t} ("
        "{id} BIGSERIAL PRIMARY KEY, {topic} VARCHAR(255) NOT NULL, "
        "{partition} VARCHAR(255) NOT NULL, {group_id} VARCHAR(255) NOT NULL, "
        "{offset} BIGINT NOT NULL, {msg_id} BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS {idx} ON {t} ({topic},{partition},{group_id})"],
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS {t} ("
        "{id} INTEGER PRIMARY KEY AUTOINCREMENT, {topic} VARCHAR(255) NOT NULL, "
        "{partition} VARCHAR(255) NOT NULL, {group_id} VARCHAR(255) NOT NULL, "
        "{offset} BIGINT NOT NULL, {msg_id} BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS {idx} ON {t} ({topic},{partition},{group_id})"],
}

_DIALECTS = {
    "sqlite3": "sqlite", "pymysql": "mysql", "MySQLdb": "mysql",
    "mysql.connector": "mysql", "psycopg2": "postgresql", "psycopg": "postgresql",
}

_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@implementer(IOffsetStorage)
class SQLOffsetStorage:
    """
    Offsets in a table of an SQL database (Java's C{MysqlOffsetStorage}):
    one row per (topic, C{"<brokerId>-<partition>"}, group) holding the
    offset and the last message id, written through a Twisted
    L{adbapi.ConnectionPool}.  The table is created if missing, with BIGINT
    offsets and ids (Java's published DDL uses C{int(11)}, which overflows).

    @param dbapiName: the DB-API module: C{sqlite3}, C{pymysql},
        C{MySQLdb}, C{psycopg2}...
    @param table: the table name (letters, digits and C{_}).
    """

    log = Logger()

    def __init__(self, dbapiName, *connargs, table=DEFAULT_TABLE, createTable=True, **connkw):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise ValueError("Illegal offset table name %r" % (table,))
        self.dialect = _DIALECTS.get(dbapiName, "sqlite")
        connkw.setdefault("cp_reconnect", True)
        connkw.setdefault("cp_noisy", False)
        if self.dialect == "sqlite":
            connkw.setdefault("check_same_thread", False)
            connkw.setdefault("cp_min", 1)
            connkw.setdefault("cp_max", 1)
        self.pool = adbapi.ConnectionPool(dbapiName, *connargs, **connkw)
        placeholder = _PLACEHOLDERS.get(self.pool.dbapi.paramstyle, "?")
        quote = "`" if self.dialect == "mysql" else '"'
        names = {name: quote + name + quote
                 for name in ("id", "topic", "partition", "group_id", "offset", "msg_id")}
        names["t"] = quote + table + quote
        names["idx"] = quote + table + "_tpg_idx" + quote
        self._ddl = [statement.format(**names) for statement in _DDL[self.dialect]]
        where = "where {topic}={p} and {partition}={p} and {group_id}={p}"
        self._select = ("select {offset},{msg_id} from {t} " + where).format(p=placeholder, **names)
        self._insert = ("insert into {t} ({topic},{partition},{group_id},{offset},{msg_id}) "
                        "values({p},{p},{p},{p},{p})").format(p=placeholder, **names)
        self._updateSQL = ("update {t} set {offset}={p},{msg_id}={p} " + where).format(
            p=placeholder, **names)
        self.table = table
        self._createTable = createTable
        self._ready = False
        self._closed = False
        self._tableLock = defer.DeferredLock()

    @classmethod
    def fromURL(cls, url, **kw):
        """
        A storage from a URL: C{sqlite:///relative.db} or
        C{sqlite:////absolute/path.db} (an in-memory database is refused: it
        would not outlive the process),
        C{mysql://user:password@host:port/database} (pymysql) or
        C{postgresql://user:password@host:port/database} (psycopg2).  A
        C{?table=name} query sets the table.
        """
        dbapiName, connargs, connkw = connectionArguments(url)
        connkw.update(kw)
        return cls(dbapiName, *connargs, **connkw)

    @defer.inlineCallbacks
    def _table(self):
        if self._ready:
            return
        yield self._tableLock.acquire()
        try:
            if not self._ready:
                if self._createTable:
                    yield self.pool.runInteraction(self._create)
                self._ready = True
        finally:
            self._tableLock.release()

    def _create(self, cursor):
        for statement in self._ddl:
            cursor.execute(statement)

    @defer.inlineCallbacks
    def load(self, topic, group, partition):
        yield self._table()
        rows = yield self.pool.runQuery(self._select, (topic, str(partition), group))
        if not rows:
            return None
        offset, messageId = rows[0]
        return PartitionOffset(topic, partition, int(offset), int(messageId))

    @defer.inlineCallbacks
    def initOffset(self, topic, group, partition, offset):
        yield self._table()
        yield self.pool.runOperation(self._insert, (topic, str(partition), group, offset, -1))

    @defer.inlineCallbacks
    def commitOffset(self, group, offsets):
        batch = takeModified(offsets)
        if not batch:
            return

        try:
            yield self._table()
            yield self.pool.runInteraction(self.writeOffsets, group, batch)
        except BaseException:
            remarkModified(None, batch)
            raise

    def writeOffsets(self, cursor, group, batch):
        """
        Write the offsets of C{batch} (from L{takeModified}) with C{cursor},
        inside a transaction the caller runs: other work in the same
        database can commit with them, or not at all
        (L{metamorphosis.usecases.apply} does).
        """
        for info, offset, messageId in batch:
            key = (info.topic, str(info.partition), group)
            cursor.execute(self._updateSQL, (offset, messageId) + key)
            # MySQL counts the rows an update changed, not those it matched:
            # zero may mean the row already holds these values.
            if cursor.rowcount == 0:
                cursor.execute(self._select, key)
                if not cursor.fetchall():
                    cursor.execute(self._insert, key + (offset, messageId))

    def close(self):
        if not self._closed:
            self._closed = True
            self.pool.close()
        return defer.succeed(None)


def connectionArguments(url):
    """
    The DB-API module name and connection arguments of an offsets URL
    (see L{SQLOffsetStorage.fromURL}); the query's parameters (C{table})
    are among the keyword arguments.

    @return: C{(dbapiName, args, kwargs)}.
    @raise ValueError: an unsupported or in-memory URL.
    """
    parts = urlsplit(url)
    kw = dict(parse_qsl(parts.query))
    if parts.scheme == "sqlite":
        path = unquote(parts.path)[1:]
        if path in ("", ":memory:"):
            raise ValueError("SQLite offsets need a file: %r" % (url,))
        return "sqlite3", (path,), kw
    if parts.scheme in ("mysql", "postgresql", "postgres"):
        kw["host"] = parts.hostname or "127.0.0.1"
        if parts.port:
            kw["port"] = parts.port
        if parts.username:
            kw["user"] = unquote(parts.username)
        if parts.password:
            kw["password"] = unquote(parts.password)
        database = parts.path.lstrip("/")
        if parts.scheme == "mysql":
            if database:
                kw["database"] = database
            return "pymysql", (), kw
        if database:
            kw["dbname"] = database
        return "psycopg2", (), kw
    raise ValueError("Unsupported offset storage URL %r" % (url,))


class OffsetCommitter:
    """
    Commits a consumer's offsets every C{interval} seconds and on demand,
    one batch at a time: a commit asked for while one is being written
    waits for it and then writes everything modified meanwhile in one
    further batch (group commit).

    @param offsets: a callable returning the current L{PartitionOffset}s.
    """

    log = Logger()

    def __init__(self, storage, group, offsets, interval=5.0, clock=None):
        from twisted.internet import reactor
        self.storage = storage
        self.group = group
        self.offsets = offsets
        self.interval = interval
        self.clock = clock or reactor
        self._lock = defer.DeferredLock()
        self._loop = None
        self._failing = False

    def start(self):
        self._loop = task.LoopingCall(self._periodic)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self):
        """
        Stop the periodic commits and make a last one.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.commit()

    def _periodic(self):
        self.commit().addCallbacks(self._committed, self._logFailure)

    def _committed(self, _):
        if self._failing:
            self._failing = False
            self.log.info("Committing the offsets of group {group} works again",
                          group=self.group)

    def _logFailure(self, failure):
        # The offsets stay modified and go with the next commit; one line
        # per outage, not one per period.
        if not self._failing:
            self._failing = True
            self.log.warn("Committing the offsets of group {group} failed, will retry every "
                          "{interval} s: {error}", group=self.group, interval=self.interval,
                          error=errorText(failure.value))

    def commit(self):
        """
        Write every modified offset.  Commits queue behind the one being
        written; the first of them to run takes everything modified by
        then, the others find nothing left to write.

        @return: a L{Deferred} firing once everything modified before the
            call is written.
        """
        return self._lock.run(lambda: defer.maybeDeferred(
            self.storage.commitOffset, self.group, list(self.offsets())))
