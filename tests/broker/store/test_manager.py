"""
Tests for L{metamorphosis.broker.store.manager.MessageStoreManager}.
"""

import errno
import os
import threading
from unittest import SkipTest

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.store import (
    IllegalTopic,
    MessageStoreManager,
    StoreClosed,
    WrongPartition,
)
from metamorphosis.broker.store import manager as manager_module
from metamorphosis.broker.store.errors import OutOfDescriptors, TooManyTopics
from metamorphosis.broker.store.fsync import (
    AWAKE_BLOCK,
    AWAKE_FILE,
    FsyncUnavailable,
    KernelFsync,
    ThreadFsync,
)
from metamorphosis.protocol.records import encodePayload

from .helpers import (
    ImmediateReactor,
    ImmediateThreadPool,
    ManualThreadPool,
    readPartition,
    record,
)


def makeConfig(dataPath, topics=(), **kwargs):
    # No timers of the damage checks unless a test asks for them.
    kwargs.setdefault("segmentCheckInterval", 0)
    kwargs.setdefault("verifyBytesPerSecond", 0)
    config = MetaConfig(dataPath=dataPath, **kwargs)
    for name, topicKwargs in topics:
        topicKwargs.setdefault("dataPath", dataPath)
        config.topics[name] = TopicConfig(topic=name, **topicKwargs)
    return config


def writeSegment(directory, data, start=0):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "%020d.meta" % (start,)), "wb") as f:
        f.write(data)


class ManagerTests(SynchronousTestCase):
    def setUp(self):
        self.dataPath = os.path.abspath(self.mktemp())
        os.makedirs(self.dataPath)
        self.reactor = ImmediateReactor()

    def startManager(self, config):
        manager = MessageStoreManager(config, reactor=self.reactor,
                                      threadpool=ImmediateThreadPool())
        with capturedLogs() as events:
            self.successResultOf(manager.startService())
        self.successResultOf(manager.whenStarted())
        self.addCleanup(lambda: manager.running and manager.stopService())
        return manager, [formatEvent(e) for e in events]

    def test_fsyncMethodLogged(self):
        """
        The manager says at start how group commit fsyncs run: here
        C{auto} falls back to a thread (this reactor watches no
        descriptors) and says why; C{thread} is taken as asked.
        """
        manager, lines = self.startManager(makeConfig(self.dataPath))
        self.assertIsInstance(manager.fsync, ThreadFsync)
        self.assertIn("Group commit fsyncs run in a thread: the reactor cannot watch a "
                      "file descriptor", lines)
        self.successResultOf(manager.stopService())
        manager, lines = self.startManager(makeConfig(self.dataPath, fsyncMethod="thread"))
        self.assertIn("Group commit fsyncs run in a thread (fsyncMethod=thread)", lines)

    def test_loadsExistingPartitions(self):
        otherPath = os.path.abspath(self.mktemp())
        writeSegment(os.path.join(self.dataPath, "test-0"), record(1, b"one") + b"torn")
        os.makedirs(os.path.join(self.dataPath, "test-1"))
        writeSegment(os.path.join(self.dataPath, "meta-test-3"), record(2, b"two"))
        writeSegment(os.path.join(self.dataPath, "gone-0"), record(3, b"three"))
        writeSegment(os.path.join(otherPath, "other-0"), record(4, b"four"), start=4096)
        for name in ("transactions", "nodash", "bad-x"):
            os.makedirs(os.path.join(self.dataPath, name))
        with open(os.path.join(self.dataPath, "plain-0"), "w") as f:
            f.write("not a directory")
        config = makeConfig(
            self.dataPath,
            [("test", dict(numPartitions=2)), ("meta-test", {}),
             ("other", dict(dataPath=otherPath))],
        )
        manager, logs = self.startManager(config)
        self.assertEqual(
            [(t, p) for t, p, _ in manager.stores()],
            [("gone", 0), ("meta-test", 3), ("test", 0), ("test", 1), ("other", 0)],
        )
        self.assertEqual(manager.topics(), ["gone", "meta-test", "test", "other"])
        test0 = manager.getStore("test", 0)
        self.assertEqual(test0.maxOffset, len(record(1, b"one")))
        self.assertEqual(manager.getStore("test", 1).maxOffset, 0)
        self.assertEqual(manager.getStore("other", 0).minOffset, 4096)
        self.assertEqual(manager.getStore("meta-test", 3).messageCount, 1)
        self.assertTrue(any("nodash" in line and "not named" in line for line in logs), logs)
        self.assertTrue(any("bad-x" in line and "partition number" in line for line in logs))
        self.assertTrue(any("test-0" in line and "cut 4 byte(s)" in line for line in logs))
        self.assertFalse(any("transactions" in line for line in logs))
        self.assertFalse(any("plain-0" in line for line in logs))

    def test_loadInParallel(self):
        """
        C{loadMessageStoresInParallel} loads each partition in its own pool
        job; the stores are still registered in directory order.
        """
        for name in ("test-0", "test-1", "test-2"):
            writeSegment(os.path.join(self.dataPath, name), record(1, name.encode()))
        pool = ManualThreadPool()
        config = makeConfig(self.dataPath, [("test", dict(numPartitions=3))],
                            loadMessageStoresInParallel=True)
        manager = MessageStoreManager(config, reactor=self.reactor, threadpool=pool)
        started = manager.startService()
        pool.runOne()
        self.assertEqual(len(pool.pending), 3)
        # Finish them in reverse order.
        pool.pending.reverse()
        pool.runAll()
        self.successResultOf(started)
        self.assertEqual([p for _, p, _ in manager.stores()], [0, 1, 2])
        self.assertEqual(manager.getStore("test", 2).slice(0, 100).read(),
                         record(1, b"test-2"))
        self.successResultOf(manager.stopService())

    def test_legality(self):
        config = makeConfig(self.dataPath, [("test", dict(numPartitions=3)),
                                            ("meta-*", dict(numPartitions=1))])
        manager, _ = self.startManager(config)
        error = self.assertRaises(IllegalTopic, manager.getOrCreateStore, "foo", 0)
        self.assertEqual(str(error), "The server do not accept topic foo")
        error = self.assertRaises(WrongPartition, manager.getOrCreateStore, "test", 3)
        self.assertEqual(str(error), "wrong partition 3")
        self.assertRaises(WrongPartition, manager.getOrCreateStore, "test", -1)
        self.assertRaises(WrongPartition, manager.getOrCreateStore, "meta-x", 1)
        self.assertIsNotNone(manager.getOrCreateStore("meta-x", 0))
        for _ in range(20):
            self.assertIn(manager.chooseRandomPartition("test"), (0, 1, 2))

    def test_storeForRemembers(self):
        """
        C{storeFor} checks a topic and partition once, until the topic
        sections are replaced (a reload), and then checks them again.
        """
        config = makeConfig(self.dataPath, [("test", dict(numPartitions=2))])
        manager, _ = self.startManager(config)
        store = manager.storeFor("test", 1)
        self.assertIs(store, manager.getStore("test", 1))
        checked = []
        original = config.isLegalTopic
        config.isLegalTopic = lambda topic: checked.append(topic) or original(topic)
        self.assertIs(manager.storeFor("test", 1), store)
        self.assertEqual(checked, [])
        self.assertRaises(WrongPartition, manager.storeFor, "test", 2)
        self.assertRaises(IllegalTopic, manager.storeFor, "other", 0)
        config.topics = {"other": TopicConfig(topic="other", dataPath=self.dataPath)}
        self.assertRaises(IllegalTopic, manager.storeFor, "test", 1)
        self.assertIsNotNone(manager.storeFor("other", 0))

    def test_pathsStayInsideDataPath(self):
        """
        Defence in depth behind the name check: a name that would resolve
        outside the data path, or to another partition's directory through a
        symbolic link, gets no store.
        """
        config = makeConfig(self.dataPath, acceptAnyTopic=True)
        manager, _ = self.startManager(config)
        for topic in ("../x", "/tmp/abs", "./victim", "a\x00b", "x" * 300):
            self.assertRaises(IllegalTopic, manager.getOrCreateStore, topic, 0)
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.dataPath, "linked-0"))
        self.assertRaises(IllegalTopic, manager.getOrCreateStore, "linked", 0)
        self.assertEqual(os.listdir(outside), [])
        self.assertEqual(sorted(os.listdir(self.dataPath)), ["linked-0"])

    def test_autoCreatedTopicsCapped(self):
        """
        Past C{maxAutoCreatedTopics} topics that no section names exactly,
        a put to a new one is refused; topics with their own section,
        existing topics and new partitions of them are not limited.
        """
        config = makeConfig(self.dataPath, [("named", {}), ("wild*", dict(numPartitions=2))],
                            maxAutoCreatedTopics=2)
        manager, _ = self.startManager(config)
        manager.getOrCreateStore("wild1", 0)
        manager.getOrCreateStore("wild2", 0)
        error = self.assertRaises(TooManyTopics, manager.getOrCreateStore, "wild3", 0)
        self.assertIn("maxAutoCreatedTopics", str(error))
        self.assertIsNotNone(manager.getOrCreateStore("wild1", 1))
        self.assertIsNotNone(manager.getOrCreateStore("named", 0))
        self.assertFalse(os.path.exists(os.path.join(self.dataPath, "wild3-0")))

    def test_reservedDescriptors(self):
        """
        A new partition that would leave fewer than
        C{reservedFileDescriptors} free descriptors is refused, saying so.
        """
        config = makeConfig(self.dataPath, acceptAnyTopic=True)
        manager, _ = self.startManager(config)
        free = manager_module.freeDescriptors()
        self.assertGreater(free, 0)
        config.reservedFileDescriptors = free + 10
        error = self.assertRaises(OutOfDescriptors, manager.getOrCreateStore, "t", 0)
        self.assertIn("reservedFileDescriptors", str(error))
        config.reservedFileDescriptors = 0
        self.assertIsNotNone(manager.getOrCreateStore("t", 0))

    def test_illegalDirectoriesNotLoaded(self):
        """
        A directory whose topic part is not a legal topic name is not
        loaded, and says so.
        """
        writeSegment(os.path.join(self.dataPath, "bad name-0"), record(1, b"one"))
        writeSegment(os.path.join(self.dataPath, "good-0"), record(1, b"one"))
        manager, logs = self.startManager(makeConfig(self.dataPath, acceptAnyTopic=True))
        self.assertEqual([(t, p) for t, p, _ in manager.stores()], [("good", 0)])
        self.assertTrue(any("'bad name' is not a legal topic name" in line for line in logs),
                        logs)

    def test_lazyCreation(self):
        topicPath = os.path.abspath(self.mktemp())
        config = makeConfig(self.dataPath, [("test", dict(numPartitions=2)),
                                            ("own", dict(dataPath=topicPath))],
                            unflushThreshold=0)
        manager, _ = self.startManager(config)
        self.assertIsNone(manager.getStore("test", 1))
        store = manager.getOrCreateStore("test", 1)
        self.assertIs(manager.getOrCreateStore("test", 1), store)
        self.assertIs(manager.getStore("test", 1), store)
        self.assertFalse(os.path.exists(os.path.join(self.dataPath, "test-1")))
        self.assertEqual(self.successResultOf(store.append(5, 0, b"hello")), 0)
        self.assertEqual(
            readPartition(os.path.join(self.dataPath, "test-1")),
            (["00000000000000000000.meta"], record(5, b"hello")),
        )
        own = manager.getOrCreateStore("own", 0)
        self.successResultOf(own.append(6, 0, b"x"))
        self.assertTrue(os.path.exists(os.path.join(topicPath, "own-0",
                                                    "00000000000000000000.meta")))

    def test_noStoreBeforeLoading(self):
        pool = ManualThreadPool()
        manager = MessageStoreManager(makeConfig(self.dataPath, [("test", {})]),
                                      reactor=self.reactor, threadpool=pool)
        started = manager.startService()
        self.assertRaises(RuntimeError, manager.getOrCreateStore, "test", 0)
        self.assertIsNone(manager.getStore("test", 0))
        pool.runAll()
        self.successResultOf(started)
        self.assertIsNotNone(manager.getOrCreateStore("test", 0))
        self.successResultOf(manager.stopService())

    def test_periodicFlush(self):
        config = makeConfig(
            self.dataPath,
            [("slow", dict(unflushThreshold=1000, unflushInterval=500)),
             ("gc", dict(unflushThreshold=0, unflushInterval=500))],
        )
        manager, _ = self.startManager(config)
        slow = manager.getOrCreateStore("slow", 0)
        gc = manager.getOrCreateStore("gc", 0)
        slow.append(1, 0, b"a")
        gc.append(1, 0, b"a")
        self.assertEqual((slow.maxOffset, gc.maxOffset), (0, 21))
        self.reactor.advance(0.4)
        self.assertEqual(slow.maxOffset, 0)
        self.reactor.advance(0.2)
        self.assertEqual(slow.maxOffset, 21)

    def test_deleteSchedule(self):
        config = makeConfig(
            self.dataPath,
            [("test", dict(deletePolicy="delete,5s", deleteWhen="*/10 * * * * ?",
                           unflushThreshold=0, maxSegmentSize=40))],
        )
        self.reactor.advance(1_000_000)
        manager, _ = self.startManager(config)
        store = manager.getOrCreateStore("test", 0)
        for i in range(3):
            store.append(i, 0, b"0123456789abcdefghij")
        self.assertEqual([s.start for s in store.segments], [0, 40, 80, 120])
        for segment in store.segments:
            os.utime(segment.path, (1_000_000, 1_000_000))
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), 1_000_010)
        self.reactor.advance(10)
        self.assertEqual([s.start for s in store.segments], [120])
        self.assertEqual(os.listdir(store.directory), ["00000000000000000120.meta"])
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), 1_000_020)

    def test_invalidRetentionDisablesIt(self):
        config = makeConfig(self.dataPath,
                            [("test", dict(deletePolicy="keep,1", unflushThreshold=0)),
                             ("other", dict(deleteWhen="0 0 6 * * *", unflushThreshold=0))])
        manager, _ = self.startManager(config)
        with capturedLogs() as events:
            store = manager.getOrCreateStore("test", 0)
            other = manager.getOrCreateStore("other", 0)
        self.assertIsNone(store.deletePolicy)
        self.assertIsNone(other.deletePolicy)
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any("Retention disabled for topic test" in line for line in lines))
        self.assertTrue(any("Retention disabled for topic other" in line for line in lines))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopFlushesAndCloses(self):
        config = makeConfig(self.dataPath, [("test", dict(unflushThreshold=1000))])
        manager, _ = self.startManager(config)
        store = manager.getOrCreateStore("test", 0)
        store.append(1, 0, b"kept")
        self.assertEqual(store.maxOffset, 0)
        self.successResultOf(manager.stopService())
        self.assertEqual(store.maxOffset, 24)
        self.failureResultOf(store.append(2, 0, b"late"), StoreClosed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        manager, _ = self.startManager(config)
        self.assertEqual(manager.getStore("test", 0).maxOffset, 24)


class ThreadedManagerTests(TestCase):
    """
    The manager with its own thread pool on the real reactor.
    """

    @inlineCallbacks
    def test_concurrentGroupCommit(self):
        dataPath = os.path.abspath(self.mktemp())
        config = makeConfig(dataPath, [("test", dict(unflushThreshold=0,
                                                     maxSegmentSize=4096))])
        manager = MessageStoreManager(config, reactor=reactor)
        yield manager.startService()
        store = manager.getOrCreateStore("test", 0)
        bodies = [b"m%04d" % (i,) * (i % 7 + 1) for i in range(300)]
        offsets = yield gatherResults([store.append(i, 0, b) for i, b in enumerate(bodies)])
        expected = [sum(20 + len(b) for b in bodies[:i]) for i in range(len(bodies))]
        self.assertEqual(offsets, expected)
        self.assertEqual(store.maxOffset, expected[-1] + 20 + len(bodies[-1]))
        records, _ = yield store.readRecords(0, 1 << 20)
        self.assertEqual([r.data for r in records][:5], bodies[:5])
        yield manager.stopService()
        names, data = readPartition(os.path.join(dataPath, "test-0"))
        self.assertGreater(len(names), 1)
        self.assertEqual(data, b"".join(record(i, b) for i, b in enumerate(bodies)))

    @inlineCallbacks
    def test_reactorServesWhileFsyncBlocks(self):
        """
        While a group commit fsync is stuck in the disk, the reactor keeps
        running and serving slices; the put is acknowledged only after it.
        """
        dataPath = os.path.abspath(self.mktemp())
        config = makeConfig(dataPath, [("test", dict(unflushThreshold=0))],
                            fsyncMethod="thread")
        manager = MessageStoreManager(config, reactor=reactor)
        yield manager.startService()
        self.addCleanup(manager.stopService)
        store = manager.getOrCreateStore("test", 0)
        yield store.append(1, 0, b"first")
        release = threading.Event()
        entered = threading.Event()
        realFdatasync = os.fdatasync

        def slowFdatasync(fd):
            entered.set()
            release.wait(10)
            realFdatasync(fd)

        # A round's sync (ThreadFsync) syncs the data: fdatasync.
        self.patch(os, "fdatasync", slowFdatasync)
        second = store.append(2, 0, b"second")
        acknowledged = []
        second.addCallback(acknowledged.append)
        yield deferToThread(entered.wait, 10)
        # The reactor is free: a timer fires and a get is answered.
        yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(store.slice(0, 100).read(), record(1, b"first"))
        self.assertEqual(store.maxOffset, 25)
        self.assertEqual(acknowledged, [])
        release.set()
        yield second
        self.assertEqual(acknowledged, [25])
        self.assertEqual(store.maxOffset, 51)

    @inlineCallbacks
    def startKernel(self, **kwargs):
        """
        A manager on the real reactor with C{fsyncMethod=kernel}, started,
        and the log lines of its start.
        """
        dataPath = os.path.abspath(self.mktemp())
        config = makeConfig(dataPath, [("test", dict(unflushThreshold=0))], fsyncMethod="kernel",
                            **kwargs)
        manager = MessageStoreManager(config, reactor=reactor)
        with capturedLogs() as events:
            try:
                yield manager.startService()
            except FsyncUnavailable as e:
                raise SkipTest("no kernel fsync here: %s" % (e,))
        self.addCleanup(manager.stopService)
        return manager, [formatEvent(e) for e in events]

    @inlineCallbacks
    def test_keepsTheDiskAwake(self):
        """
        The kernel's fsyncs keep the disk awake with reads of the awake
        file, made in the data path, every C{diskKeepAwakeMicros} at most.
        """
        manager, lines = yield self.startKernel(diskKeepAwakeMicros=250)
        path = os.path.join(manager.config.dataPath, AWAKE_FILE)
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        except OSError as e:
            raise SkipTest("no O_DIRECT here: %s" % (e,))
        self.assertEqual(os.path.getsize(path), AWAKE_BLOCK)
        self.assertEqual(manager.fsync.awakeGap, 0.00025)
        self.assertIsNotNone(manager.fsync._awake)

    @inlineCallbacks
    def test_diskLetSleep(self):
        """
        With C{diskKeepAwakeMicros=0} the disk is not kept awake, and no
        file is made for it.
        """
        manager, lines = yield self.startKernel(diskKeepAwakeMicros=0)
        self.assertEqual(manager.fsync.awakeGap, 0)
        self.assertFalse(os.path.exists(os.path.join(manager.config.dataPath, AWAKE_FILE)))

    @inlineCallbacks
    def test_awakeFileRefused(self):
        """
        A data path that cannot hold the awake file (a file system without
        C{O_DIRECT}) is said once; the broker goes on without it.
        """
        def refused(path):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

        self.patch(manager_module, "openAwakeFile", refused)
        manager, lines = yield self.startKernel()
        self.assertEqual(manager.fsync.awakeGap, 0)
        [line] = [line for line in lines if "kept awake" in line]
        self.assertIn("The disk is not kept awake between group commit rounds", line)
        self.assertIn("Invalid argument", line)
        store = manager.getOrCreateStore("test", 0)
        yield store.append(0, 0, encodePayload(b"first", None)[0])

    @inlineCallbacks
    def test_kernelFsyncRounds(self):
        """
        With C{fsyncMethod=kernel} the group commit rounds run no
        C{fsync(2)} in a thread: the kernel runs them, and every put is
        acknowledged, in order, with its bytes in the file.
        """
        dataPath = os.path.abspath(self.mktemp())
        config = makeConfig(dataPath, [("test", dict(unflushThreshold=0))],
                            fsyncMethod="kernel")
        manager = MessageStoreManager(config, reactor=reactor)
        try:
            yield manager.startService()
        except FsyncUnavailable as e:
            raise SkipTest("no kernel fsync here: %s" % (e,))
        store = manager.getOrCreateStore("test", 0)
        # The first put creates the segment file (in a thread, with fsyncs).
        yield store.append(0, 0, encodePayload(b"first", None)[0])
        threaded = []
        self.patch(os, "fsync", threaded.append)
        bodies = [b"put %d" % (i,) for i in range(1, 40)]
        offsets = yield gatherResults([store.append(i, 0, encodePayload(body, None)[0])
                                       for i, body in enumerate(bodies, 1)])
        self.assertEqual(threaded, [])
        self.assertIsInstance(manager.fsync, KernelFsync)
        self.assertEqual(offsets, sorted(offsets))
        self.assertEqual(store.maxOffset, store.sizeInBytes)
        yield manager.stopService()
        _, data = readPartition(os.path.join(dataPath, "test-0"))
        self.assertEqual(data, b"".join(
            record(i, body) for i, body in enumerate([b"first"] + bodies)))

