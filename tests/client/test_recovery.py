"""
Local recovery: kept messages survive a restart, are replayed in order,
deleted once processed, and a torn write is cut off.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.client.recovery import RecoverManager, RecoverStore


class Listener:
    def __init__(self, failOn=()):
        self.received = []
        self.failOn = set(failOn)

    def receiveMessages(self, message):
        if message.id in self.failOn:
            raise RuntimeError("still failing")
        self.received.append((message.topic, message.id, message.data, message.attribute,
                              message.partition))


class RecoverManagerTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def manager(self):
        from twisted.internet import reactor
        manager = RecoverManager(self.path, interval=3600, firstDelay=3600, reactor=reactor)
        self.addCleanup(manager.stop)
        return manager

    @defer.inlineCallbacks
    def test_replayAcrossRestart(self):
        """
        Messages kept before a restart are replayed after it, in order,
        with their attributes and partitions; those the listener processed
        are gone, those it failed on stay.
        """
        first = self.manager()
        yield first.start()
        for i, attribute in [(10, None), (11, "tag"), (12, "")]:
            yield first.append("g", Message("t", b"m%d" % i, attribute, i, Partition(1, 2)))
        yield first.append("h", Message("t", b"other", None, 13, Partition(0, 0)))
        self.assertEqual(first.pending("t", "g"), 3)
        yield first.stop()

        second = self.manager()
        listener = Listener(failOn={11})
        second.register("t", "g", listener)
        yield second.start()
        yield second.replay()
        self.assertEqual(listener.received, [("t", 10, b"m10", None, Partition(1, 2)),
                                             ("t", 12, b"m12", "", Partition(1, 2))])
        self.assertEqual(second.pending("t", "g"), 1)
        # Another group's store is not opened by this manager.
        self.assertEqual(second.pending("t", "h"), 0)
        self.flushLoggedErrors(RuntimeError)
        yield second.stop()

        third = self.manager()
        listener = Listener()
        third.register("t", "g", listener)
        third.register("t", "h", Listener())
        yield third.start()
        self.assertEqual(third.pending("t", "h"), 1)
        yield third.replay()
        yield third.replay()
        self.assertEqual(listener.received, [("t", 11, b"m11", "tag", Partition(1, 2))])
        self.assertEqual(third.pending("t", "g"), 0)

    @defer.inlineCallbacks
    def test_stopWhileStarting(self):
        """
        A manager stopped before its start is over schedules no replay:
        no timer outlives it (trial fails the test on one left behind).
        """
        manager = self.manager()
        manager.register("t", "g", Listener())
        starting = manager.start()
        yield manager.stop()
        yield starting
        self.assertIsNone(manager._first)

    @defer.inlineCallbacks
    def test_scheduledReplay(self):
        from twisted.internet import reactor
        manager = RecoverManager(self.path, interval=0.05, firstDelay=0.01, reactor=reactor)
        self.addCleanup(manager.stop)
        listener = Listener()
        manager.register("t", "g", listener)
        yield manager.start()
        yield manager.append("g", Message("t", b"x", None, 5, Partition(0, 0)))
        for _ in range(100):
            if listener.received:
                break
            yield deferLater(0.02)
        self.assertEqual([r[1] for r in listener.received], [5])

    def test_tornTail(self):
        """
        A half-written entry at the end (a crash mid-append) is cut off;
        the entries before it survive.
        """
        store = RecoverStore(self.path, "t", "g")
        store.open()
        from metamorphosis.protocol.records import Record
        store.append(Partition(0, 0), Record(1, 0, b"one"))
        store.append(Partition(0, 0), Record(2, 0, b"two"))
        store.close()
        size = os.path.getsize(store.path)
        with open(store.path, "r+b") as f:
            f.truncate(size - 3)
        again = RecoverStore(self.path, "t", "g")
        again.open()
        self.assertEqual([r.id for _, r in again.entries.values()], [1])
        again.append(Partition(0, 0), Record(3, 0, b"three"))
        again.close()
        last = RecoverStore(self.path, "t", "g")
        last.open()
        self.assertEqual([r.id for _, r in last.entries.values()], [1, 3])
        last.close()

    def test_compaction(self):
        """
        Once every entry is deleted the log is emptied.
        """
        from metamorphosis.protocol.records import Record
        store = RecoverStore(self.path, "t", "g")
        store.open()
        keys = [store.append(Partition(0, 0), Record(i, 0, b"x")) for i in range(5)]
        for key in keys:
            store.delete(key)
        self.assertEqual(os.path.getsize(store.path), 0)
        store.close()


class RecoverStorePropertyTests(TestCase):
    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.tuples(st.integers(-2 ** 63, 2 ** 63 - 1), st.binary(max_size=64),
                              st.booleans()), max_size=12),
           st.integers(0, 200))
    def test_reopenAfterTornTail(self, entries, cut):
        """
        Whatever was appended and deleted, and wherever the file was cut
        short, reopening gives back a prefix-consistent state: the entries
        whose entries are intact, in order, minus those deleted.
        """
        from metamorphosis.protocol.records import Record
        directory = self.mktemp()
        store = RecoverStore(directory, "t", "g")
        store.open()
        # (state, file size) after each operation since the log was last
        # rewritten: the file only grows between rewrites.
        history = [([], 0)]
        for msgId, body, delete in entries:
            key = store.append(Partition(0, 1), Record(msgId, 0, body))
            history.append((list(store.entries.values()), os.path.getsize(store.path)))
            if delete:
                store.delete(key)
                size = os.path.getsize(store.path)
                if size < history[-1][1]:
                    history = []
                history.append((list(store.entries.values()), size))
        store.close()
        keep = max(0, os.path.getsize(store.path) - cut)
        with open(store.path, "r+b") as f:
            f.truncate(keep)
        again = RecoverStore(directory, "t", "g")
        again.open()
        expected = [state for state, size in history if size <= keep][-1]
        self.assertEqual(list(again.entries.values()), expected)
        again.close()


def deferLater(seconds):
    from twisted.internet import reactor, task
    return task.deferLater(reactor, seconds, lambda: None)
