"""
A writer for the crash tests: appends to partition C{test-0} of a data path
until it is killed, reporting on stdout what it may rely on.

Usage: python -m tests.broker.store.crashwriter DATAPATH ROUND THRESHOLD

Lines: C{ready <offset>} once the log is recovered (where appending resumes),
C{ack <index> <offset>} when a put's Deferred fires, C{hwm <offset>} when the
flushed high-water mark moves.  Record bodies are L{body}C{(round, index)}.
"""

import random
import struct
import sys

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import LoopingCall, react

from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.store import MessageStoreManager

WRITERS = 8


def body(round, index):
    """
    The body of record C{index} of round C{round}: its identity, then filler
    whose length and bytes follow from it.
    """
    rng = random.Random(round * 1000003 + index)
    return struct.pack(">II", round, index) + rng.randbytes(rng.randrange(0, 1500))


def identify(data):
    return struct.unpack(">II", data[:8])


def config(dataPath, threshold):
    config = MetaConfig(dataPath=dataPath)
    config.topics["test"] = TopicConfig(
        topic="test", dataPath=dataPath, unflushThreshold=threshold,
        unflushInterval=50, maxSegmentSize=64 * 1024,
    )
    return config


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(reactor, dataPath, round, threshold):
    manager = MessageStoreManager(config(dataPath, threshold), reactor=reactor)
    await manager.startService()
    store = manager.getOrCreateStore("test", 0)
    say("ready %d" % (store.maxOffset,))
    counter = iter(range(10**9))
    hwm = [store.maxOffset]

    def reportHighWaterMark():
        if store.maxOffset != hwm[0]:
            hwm[0] = store.maxOffset
            say("hwm %d" % (hwm[0],))

    LoopingCall(reportHighWaterMark).start(0.002)

    async def writer():
        while True:
            index = next(counter)
            offset = await store.append(index, 0, body(round, index))
            say("ack %d %d" % (index, offset))

    await gatherResults([ensureDeferred(writer()) for _ in range(WRITERS)])


if __name__ == "__main__":
    dataPath, round, threshold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    react(lambda reactor: ensureDeferred(main(reactor, dataPath, round, threshold)))
