"""
The offset storages: each keeps a group's offsets across a restart (a new
storage object on the same ZooKeeper, file or database) in the format Java
uses.
"""

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.client import KazooClient
from twisted.internet import defer, threads
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from metamorphosis.client.interfaces import IOffsetStorage
from metamorphosis.client.offsets import (
    DEFAULT_TABLE,
    LocalOffsetStorage,
    OffsetCommitter,
    PartitionOffset,
    SQLOffsetStorage,
    ZooKeeperOffsetStorage,
    parseZooKeeperOffset,
)
from metamorphosis.client.partition import Partition
from tests.sqlservers import MARIADB, POSTGRESQL
from tests.zookeeper import uniqueRoot, zookeeperAddress


class OffsetStorageTestsMixin:
    """
    Behaviour every L{IOffsetStorage} shares.  C{makeStorage()} returns a
    new storage over the same persistent place each time it is called.
    """

    group = "g1"

    def storage(self):
        storage = self.makeStorage()
        self.addCleanup(storage.close)
        return storage

    def test_interface(self):
        self.assertTrue(verifyObject(IOffsetStorage, self.storage()))

    @defer.inlineCallbacks
    def test_loadMissing(self):
        self.assertIsNone((yield self.storage().load("t", self.group, Partition(0, 0))))

    @defer.inlineCallbacks
    def test_survivesRestart(self):
        """
        Committed offsets and message ids are loaded by a new storage;
        only modified entries are written, and commits clear the flag.
        """
        first = self.storage()
        p0, p1, p10 = Partition(0, 0), Partition(0, 1), Partition(1, 10)
        for p in (p0, p1, p10):
            self.assertIsNone((yield first.load("t", self.group, p)))
            yield first.initOffset("t", self.group, p, 0)
        infos = [PartitionOffset("t", p0, 0), PartitionOffset("t", p1, 0),
                 PartitionOffset("t", p10, 0)]
        infos[0].advance(120, -5468920163464118272)
        infos[2].advance(2 ** 40, 222735743569625088)
        yield first.commitOffset(self.group, infos)
        self.assertEqual([i.modified for i in infos], [False, False, False])
        infos[0].advance(145, -5468920163464118271)
        yield first.commitOffset(self.group, infos)
        yield first.close()

        second = self.storage()
        loaded = yield second.load("t", self.group, p0)
        self.assertEqual((loaded.topic, loaded.partition, loaded.offset, loaded.messageId,
                          loaded.modified),
                         ("t", p0, 145, -5468920163464118271, False))
        loaded = yield second.load("t", self.group, p10)
        self.assertEqual((loaded.offset, loaded.messageId), (2 ** 40, 222735743569625088))
        self.assertIsNone((yield second.load("t", "other", p0)))
        self.assertIsNone((yield second.load("u", self.group, p0)))

    @defer.inlineCallbacks
    def test_groupsApart(self):
        storage = self.storage()
        a = PartitionOffset("t", Partition(0, 0), 0)
        b = PartitionOffset("t", Partition(0, 0), 0)
        a.advance(10, 1)
        b.advance(20, 2)
        yield storage.commitOffset(self.group, [a])
        yield storage.commitOffset(self.group + "x", [b])
        self.assertEqual((yield storage.load("t", self.group, Partition(0, 0))).offset, 10)
        self.assertEqual((yield storage.load("t", self.group + "x", Partition(0, 0))).offset, 20)


class ZooKeeperOffsetStorageTests(OffsetStorageTestsMixin, TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.client = KazooClient(hosts=zookeeperAddress())
        yield threads.deferToThread(self.client.start)
        self.addCleanup(threads.deferToThread, self.client.close)
        self.addCleanup(threads.deferToThread, self.client.stop)
        self.root = uniqueRoot()

    def makeStorage(self):
        return ZooKeeperOffsetStorage(self.client, self.root)

    @defer.inlineCallbacks
    def test_znodeFormat(self):
        """
        Java's C{<msgId>-<offset>} in a persistent znode under the group.
        """
        info = PartitionOffset("test", Partition(0, 1), 0)
        info.advance(120, -5468920163472506880)
        yield self.storage().commitOffset("grp-b", [info])
        data, stat = yield threads.deferToThread(
            self.client.get, self.root + "/consumers/grp-b/offsets/test/0-1")
        self.assertEqual(data, b"-5468920163472506880-120")
        self.assertEqual(stat.ephemeralOwner, 0)

    @defer.inlineCallbacks
    def test_oldFormat(self):
        """
        A pre-1.4 znode holding a bare offset loads with message id -1.
        """
        yield threads.deferToThread(
            self.client.create, self.root + "/consumers/g/offsets/t/0-0", b"339", makepath=True)
        loaded = yield self.storage().load("t", "g", Partition(0, 0))
        self.assertEqual((loaded.offset, loaded.messageId), (339, -1))

    @defer.inlineCallbacks
    def test_garbage(self):
        """
        An offset znode that is not an offset is logged and ignored.
        """
        yield threads.deferToThread(
            self.client.create, self.root + "/consumers/g/offsets/t/0-0", b"x-y", makepath=True)
        self.assertIsNone((yield self.storage().load("t", "g", Partition(0, 0))))


class ParseZooKeeperOffsetTests(TestCase):
    def test_formats(self):
        self.assertEqual(parseZooKeeperOffset("-1-0"), (-1, 0))
        self.assertEqual(parseZooKeeperOffset("-5468572396564774912-25"),
                         (-5468572396564774912, 25))
        self.assertEqual(parseZooKeeperOffset("222735743569625088-1073741911"),
                         (222735743569625088, 1073741911))
        self.assertEqual(parseZooKeeperOffset("0-339"), (0, 339))
        self.assertEqual(parseZooKeeperOffset("339"), (-1, 339))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(-2 ** 63, 2 ** 63 - 1), st.integers(0, 2 ** 63 - 1))
    def test_roundTrip(self, messageId, offset):
        """
        Whatever the (signed 64-bit) id, the written form parses back.
        """
        self.assertEqual(parseZooKeeperOffset("%d-%d" % (messageId, offset)), (messageId, offset))


class LocalOffsetStorageTests(OffsetStorageTestsMixin, TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def makeStorage(self):
        return LocalOffsetStorage(self.path)

    @defer.inlineCallbacks
    def test_javaFormat(self):
        """
        The file is Java's JSON map and has no temporary files beside it.
        """
        info = PartitionOffset("t", Partition(0, 1), 0)
        info.advance(123, 7)
        yield self.storage().commitOffset("g", [info])
        with open(self.path) as f:
            self.assertEqual(json.load(f), {"g": [
                {"topic": "t", "partition": {"brokerId": 0, "partition": 1},
                 "offset": 123, "messageId": 7, "modified": False}]})
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(self.path))),
                         [os.path.basename(self.path)])

    @defer.inlineCallbacks
    def test_readsJavaFile(self):
        """
        A file written by Java (offset as a string, extra fields) loads; an
        empty file is allowed.
        """
        with open(self.path, "w") as f:
            f.write('{"g":[{"topic":"t","partition":{"brokerId":2,"partition":3},'
                    '"offset":"456","modified":true,"messageId":99}],"h":null}')
        loaded = yield self.storage().load("t", "g", Partition(2, 3))
        self.assertEqual((loaded.offset, loaded.messageId), (456, 99))
        open(self.path, "w").close()
        self.assertIsNone((yield self.storage().load("t", "g", Partition(2, 3))))

    @defer.inlineCallbacks
    def test_sharedFile(self):
        """
        Two storages on one file (two broadcast consumers of a process)
        commit at the same time without losing each other's groups.
        """
        first, second = self.storage(), self.storage()
        a = PartitionOffset("t", Partition(0, 0), 0)
        b = PartitionOffset("t", Partition(0, 0), 0)
        a.advance(10, 1)
        b.advance(20, 2)
        yield defer.gatherResults([first.commitOffset("g-1", [a]),
                                   second.commitOffset("g-2", [b])])
        third = self.storage()
        self.assertEqual((yield third.load("t", "g-1", Partition(0, 0))).offset, 10)
        self.assertEqual((yield third.load("t", "g-2", Partition(0, 0))).offset, 20)
        a.advance(11, 3)
        yield first.commitOffset("g-1", [a])
        self.assertEqual((yield second.load("t", "g-1", Partition(0, 0))).offset, 11)

    @defer.inlineCallbacks
    def test_unreadableFile(self):
        """
        A corrupt file is logged and treated as empty, not fatal.
        """
        with open(self.path, "w") as f:
            f.write("{not json")
        self.assertIsNone((yield self.storage().load("t", "g", Partition(0, 0))))


class SQLRowsMixin:
    """
    What every SQL database keeps: one row per topic, partition and group.
    """

    table = DEFAULT_TABLE

    @defer.inlineCallbacks
    def test_sameOffsetTwice(self):
        """
        Committing an offset the row already holds keeps one row.  MySQL
        counts such an update as changing no row (affected, not matched,
        rows), which once read as "no row yet" and inserted a second one.
        """
        storage = self.storage()
        for _ in range(3):
            info = PartitionOffset("t", Partition(0, 0), 0)
            info.advance(10, 1)
            yield storage.commitOffset(self.group, [info])
        rows = yield storage.pool.runQuery("select count(*) from " + self.table)
        self.assertEqual(rows[0][0], 1)
        self.assertEqual((yield storage.load("t", self.group, Partition(0, 0))).offset, 10)


class SQLiteOffsetStorageTests(SQLRowsMixin, OffsetStorageTestsMixin, TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def makeStorage(self):
        return SQLOffsetStorage.fromURL("sqlite:///" + self.path)

    @defer.inlineCallbacks
    def test_javaSchema(self):
        """
        The rows are Java's: partition as C{"<brokerId>-<partition>"}, one
        row per partition and group, C{msg_id} -1 after C{initOffset}.
        """
        import sqlite3
        storage = self.storage()
        yield storage.initOffset("t", "g", Partition(1, 2), 0)
        info = PartitionOffset("t", Partition(1, 2), 0)
        info.advance(77, -3)
        yield storage.initOffset("t", "g", Partition(1, 3), 5)
        yield storage.commitOffset("g", [info])
        yield storage.close()
        rows = sqlite3.connect(self.path).execute(
            'select topic, "partition", group_id, "offset", msg_id from '
            'meta_topic_partition_group_offset order by "partition"').fetchall()
        self.assertEqual(rows, [("t", "1-2", "g", 77, -3), ("t", "1-3", "g", 5, -1)])

    def test_badURL(self):
        self.assertRaises(ValueError, SQLOffsetStorage.fromURL, "sqlite:///:memory:")
        self.assertRaises(ValueError, SQLOffsetStorage.fromURL, "oracle://x/y")
        self.assertRaises(ValueError, SQLOffsetStorage, "sqlite3", "x", table="a;drop")


class ServerSQLMixin(SQLRowsMixin, OffsetStorageTestsMixin):
    """
    A database server on loopback, skipped when none answers; every test
    gets a table of its own, dropped afterwards.
    """

    def setUp(self):
        self.table = self.server.scratchTable(self, "offsets_test_")

    def makeStorage(self):
        return SQLOffsetStorage.fromURL(self.server.url, table=self.table)


class MariaDBOffsetStorageTests(ServerSQLMixin, TestCase):
    server = MARIADB


class PostgreSQLOffsetStorageTests(ServerSQLMixin, TestCase):
    server = POSTGRESQL


@implementer(IOffsetStorage)
class RecordingStorage:
    """
    Records the batches it is asked to write; each write completes when
    the test fires its Deferred.
    """

    def __init__(self):
        self.batches = []
        self.pending = []

    def commitOffset(self, group, offsets):
        self.batches.append([(o.partition, o.offset) for o in offsets if o.modified])
        for o in offsets:
            o.modified = False
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def load(self, topic, group, partition):
        return defer.succeed(None)

    def initOffset(self, topic, group, partition, offset):
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)


class OffsetCommitterTests(TestCase):
    def setUp(self):
        self.storage = RecordingStorage()
        self.offsets = [PartitionOffset("t", Partition(0, i), 0) for i in range(3)]
        self.clock = Clock()
        self.committer = OffsetCommitter(self.storage, "g", lambda: self.offsets,
                                         interval=5.0, clock=self.clock)

    def test_periodic(self):
        self.committer.start()
        self.offsets[1].advance(10, 1)
        self.clock.advance(4.9)
        self.assertEqual(self.storage.batches, [])
        self.clock.advance(0.1)
        self.assertEqual(self.storage.batches, [[(Partition(0, 1), 10)]])
        self.storage.pending.pop().callback(None)
        self.committer.stop()

    def test_groupCommit(self):
        """
        Commits asked for during a write become one further batch; the
        callers learn when their offsets are written.
        """
        self.offsets[0].advance(1, 1)
        first = self.committer.commit()
        self.offsets[1].advance(2, 2)
        second = self.committer.commit()
        self.offsets[2].advance(3, 3)
        third = self.committer.commit()
        self.assertEqual(len(self.storage.batches), 1)
        fired = []
        for d in (first, second, third):
            d.addCallback(fired.append)
        self.storage.pending.pop().callback(None)
        self.assertEqual(len(fired), 1)
        self.assertEqual(self.storage.batches[1], [(Partition(0, 1), 2), (Partition(0, 2), 3)])
        self.storage.pending.pop().callback(None)
        # the third commit found nothing left to write
        self.assertEqual(self.storage.batches[2], [])
        self.storage.pending.pop().callback(None)
        self.assertEqual(len(fired), 3)
