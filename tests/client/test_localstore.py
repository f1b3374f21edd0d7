"""
Tests for L{metamorphosis.client.localstore.LocalMessageStorage}.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from metamorphosis.client.interfaces import ILocalMessageStorage
from metamorphosis.client.localstore import LocalMessageStorage
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition

P = Partition(0, 1)


class LocalMessageStorageTests(TestCase):
    def open(self, path):
        storage = LocalMessageStorage(path, reactor)
        self.addCleanup(storage.close)
        return storage

    @defer.inlineCallbacks
    def fill(self, storage, n, topic="t", partition=P):
        for i in range(n):
            yield storage.append(Message(topic, b"m%d" % i, "a%d" % i if i % 2 else None), partition)

    @defer.inlineCallbacks
    def test_replayInOrder(self):
        storage = self.open(self.mktemp())
        verifyObject(ILocalMessageStorage, storage)
        yield self.fill(storage, 5)
        yield self.fill(storage, 2, partition=Partition(1, 0))
        self.assertEqual(storage.count("t", P), 5)
        self.assertEqual(sorted(storage.keys()), [("t", P), ("t", Partition(1, 0))])
        seen = []

        def send(message):
            seen.append((message.topic, message.data, message.attribute))
            return defer.succeed(True)

        sent = yield storage.replay("t", P, send)
        self.assertEqual(sent, 5)
        self.assertEqual(seen, [("t", b"m%d" % i, "a%d" % i if i % 2 else None) for i in range(5)])
        self.assertEqual(storage.count("t", P), 0)
        self.assertEqual(storage.keys(), [("t", Partition(1, 0))])
        self.assertFalse(os.path.exists(os.path.join(storage.path, "t@0-1")))

    @defer.inlineCallbacks
    def test_stopsAtFirstFailure(self):
        storage = self.open(self.mktemp())
        yield self.fill(storage, 4)
        answers = iter([True, False])
        sent = yield storage.replay("t", P, lambda m: defer.succeed(next(answers)))
        self.assertEqual(sent, 1)
        self.assertEqual(storage.count("t", P), 3)
        failing = yield storage.replay("t", P, lambda m: defer.fail(RuntimeError("down")))
        self.assertEqual(failing, 0)
        seen = []
        yield storage.replay("t", P, lambda m: defer.succeed(seen.append(m.data) or True))
        self.assertEqual(seen, [b"m1", b"m2", b"m3"])

    @defer.inlineCallbacks
    def test_survivesRestart(self):
        """
        Kept messages and the re-sent position survive closing and
        reopening the storage.
        """
        path = self.mktemp()
        storage = self.open(path)
        yield self.fill(storage, 4)
        answers = iter([True, True, False])
        yield storage.replay("t", P, lambda m: defer.succeed(next(answers)))
        yield storage.close()
        reopened = self.open(path)
        yield reopened.whenReady()
        self.assertEqual(reopened.count("t", P), 2)
        seen = []
        yield reopened.replay("t", P, lambda m: defer.succeed(seen.append(m.data) or True))
        self.assertEqual(seen, [b"m2", b"m3"])

    @defer.inlineCallbacks
    def test_tornTail(self):
        """
        A record cut short by a crash is not counted nor replayed; the
        complete ones before it are.
        """
        path = self.mktemp()
        storage = self.open(path)
        yield self.fill(storage, 3)
        yield storage.close()
        with open(os.path.join(path, "t@0-1", "messages"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) - 1)
        reopened = self.open(path)
        yield reopened.whenReady()
        self.assertEqual(reopened.count("t", P), 2)

    @defer.inlineCallbacks
    def test_appendDuringReplay(self):
        """
        Messages appended while a replay runs are replayed after the older
        ones, in the same replay.
        """
        storage = self.open(self.mktemp())
        yield self.fill(storage, 2)
        seen = []

        def send(message):
            seen.append(message.data)
            if message.data == b"m0":
                storage.append(Message("t", b"late"), P)
            return defer.succeed(True)

        sent = yield storage.replay("t", P, send)
        self.assertEqual(seen, [b"m0", b"m1", b"late"])
        self.assertEqual(sent, 3)
        self.assertEqual(storage.count("t", P), 0)
