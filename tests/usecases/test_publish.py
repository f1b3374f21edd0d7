"""
The publisher's bookkeeping, with a scripted source and producer: what is
saved as the position, retries, order per partition, kept changes.
"""

import json
import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from metamorphosis.client.partition import Partition
from metamorphosis.client.producer import SEND_TO_LOCAL, SendResult
from metamorphosis.client.selectors import OrderedPartitionSelector
from metamorphosis.tools.tail import StateFile
from metamorphosis.usecases.binlog import Checkpoint
from metamorphosis.usecases.changes import rowChanges
from metamorphosis.usecases.publish import Backoff, ChangePublisher
from tests.waiting import waitFor

PARTITIONS = [Partition(0, n) for n in range(3)]


def transaction(pos, *ids):
    """
    The items of one transaction inserting rows C{ids}, ending at C{pos}.
    """
    changes = rowChanges("insert", "shop", "items", "id", [{"values": {"id": i}} for i in ids],
                         ("bin.000001", pos - 1), 0, None)
    return changes + [Checkpoint(("bin.000001", pos))]


class ScriptedSource:
    """
    Returns the scripted batches, then nothing; a batch that is an
    exception is raised.
    """

    def __init__(self, batches):
        self.batches = batches
        self.opened = []

    def open(self, position, skipThrough):
        self.opened.append((position, skipThrough))
        return self

    def read(self, limit):
        if self.batches:
            batch = self.batches.pop(0)
            if isinstance(batch, Exception):
                raise batch
            return batch
        import time
        time.sleep(0.01)
        return []

    def close(self):
        pass


class Storage:
    def __init__(self):
        self.counts = {}

    def count(self, topic, partition):
        return self.counts.get(partition, 0)


class ScriptedProducer:
    """
    Answers sends from C{answers} (a list of results or exceptions, then
    success), recording what was sent per partition.
    """

    def __init__(self, answers=()):
        self.selector = OrderedPartitionSelector({"changes": PARTITIONS},
                                                 key=lambda m: m.partitionKey)
        self.storage = Storage()
        self.answers = list(answers)
        self.sent = {}
        self.recovered = []

    def sendMessage(self, message):
        partition = self.selector.getPartition("changes", PARTITIONS, message)
        answer = self.answers.pop(0) if self.answers else SendResult(True, partition, 0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer.success:
            bodies = json.loads(message.data)
            for body in bodies if isinstance(bodies, list) else [bodies]:
                self.sent.setdefault(partition, []).append(body["after"]["id"])
        return defer.succeed(answer)

    def recover(self, topic, partition):
        self.recovered.append(partition)
        return defer.succeed(0)


class PublisherTests(TestCase):
    def publisher(self, batches, producer):
        path = os.path.abspath(self.mktemp())
        state = StateFile(path, reactor)
        source = ScriptedSource(batches)
        publisher = ChangePublisher(source.open, ("bin.000001", 4), producer, "changes", state,
                                    reactor, window=10,
                                    backoff=lambda: Backoff(0.01, 0.05))
        publisher.startService()
        self.addCleanup(publisher.stopService)
        return publisher, source, state

    def test_positionAfterAcknowledged(self):
        """
        The position saved is the end of the last transaction whose changes
        (and all before them) were acknowledged.
        """
        async def check():
            producer = ScriptedProducer()
            publisher, _, state = self.publisher(
                [transaction(10, 1, 2, 3), transaction(20, 4, 5)], producer)
            await waitFor(lambda: publisher.position == ("bin.000001", 20))
            await waitFor(lambda: StateFile(state.path, reactor).load() == ("bin.000001", 20))
            self.assertEqual(sorted(i for ids in producer.sent.values() for i in ids),
                             [1, 2, 3, 4, 5])
        return defer.ensureDeferred(check())

    def test_retryKeepsOrder(self):
        """
        A failed send is retried before the next change of its partition:
        each partition receives its rows in binlog order, and the position
        waits for the retry.
        """
        async def check():
            producer = ScriptedProducer([RuntimeError("down"), RuntimeError("down")])
            ids = list(range(1, 30))
            publisher, _, _ = self.publisher([transaction(10, *ids)], producer)
            await waitFor(lambda: publisher.position == ("bin.000001", 10))
            self.assertEqual(sorted(i for sent in producer.sent.values() for i in sent), ids)
            for sent in producer.sent.values():
                self.assertEqual(sent, sorted(sent))
        return defer.ensureDeferred(check())

    def test_keptChangesHoldThePosition(self):
        """
        A change the producer kept on local disk counts as handed over, but
        the position is saved only once no kept change is left.
        """
        async def check():
            kept = SendResult(True, PARTITIONS[0], -1, SEND_TO_LOCAL)
            producer = ScriptedProducer([kept])
            producer.storage.counts[PARTITIONS[0]] = 1
            publisher, _, state = self.publisher([transaction(10, 1)], producer)
            await waitFor(lambda: publisher.position == ("bin.000001", 10))
            await waitFor(lambda: producer.recovered, what="kept changes pushed")
            self.assertNotEqual(StateFile(state.path, reactor).load(), ("bin.000001", 10))
            producer.storage.counts[PARTITIONS[0]] = 0
            await waitFor(lambda: StateFile(state.path, reactor).load() == ("bin.000001", 10))
        return defer.ensureDeferred(check())

    def test_readFailureResumesFromCheckpoint(self):
        """
        A failed read opens a new source at the last checkpoint, skipping
        what was already read.
        """
        async def check():
            producer = ScriptedProducer()
            first = transaction(10, 1)
            partial = transaction(20, 2, 3)[:1]
            publisher, source, _ = self.publisher(
                [first, partial, ConnectionError("lost"), transaction(20, 2, 3)[1:]], producer)
            await waitFor(lambda: publisher.position == ("bin.000001", 20))
            self.assertEqual(source.opened[0], (("bin.000001", 4), None))
            self.assertEqual(source.opened[1], (("bin.000001", 10), ("bin.000001", 19)))
        return defer.ensureDeferred(check())
