"""
Test doubles for running a store without threads: a reactor whose
C{callFromThread} runs at once, and thread pools that run work immediately
or when the test says so.
"""

import os
import struct

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from metamorphosis.broker.config import TopicConfig
from metamorphosis.broker.store.partition import MessageStore
from metamorphosis.broker.store.recovery import loadPartition
from metamorphosis.protocol.records import HEADER_SIZE, encodePayload, encodeRecord


class ImmediateReactor(Clock):
    """
    A L{Clock} on which results from "threads" arrive at once.
    """

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class ManualThreadPool:
    """
    A thread pool whose work runs only when the test calls L{runOne}.
    """

    def __init__(self):
        self.pending = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.pending.append((onResult, f, args, kwargs))

    def runOne(self):
        onResult, f, args, kwargs = self.pending.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            if onResult is None:
                raise
            onResult(False, Failure())
        else:
            if onResult is not None:
                onResult(True, result)

    def runAll(self):
        while self.pending:
            self.runOne()


class ImmediateThreadPool(ManualThreadPool):
    """
    A thread pool that runs work on the calling thread at once.
    """

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        ManualThreadPool.callInThreadWithCallback(self, onResult, f, *args, **kwargs)
        self.runAll()


def topicConfig(**kwargs):
    return TopicConfig(topic="test", **kwargs)


def makeStore(directory, threadpool=None, reactor=None, recover=False, preallocate=64,
              **configKwargs):
    """
    A synchronous L{MessageStore} for partition C{test-0} in C{directory},
    recovered from what is there when C{recover}.  Its preallocated tail is
    small by default, so that appends run into it and past it all the time.
    """
    reactor = reactor or ImmediateReactor()
    threadpool = threadpool or ImmediateThreadPool()
    segments, count, damaged, readOnly = None, 0, (), None
    if recover:
        recovered = loadPartition(directory)
        segments, count = recovered.segments, recovered.messageCount
        damaged, readOnly = recovered.damaged, recovered.readOnly
    return MessageStore(
        "test", 0, directory, topicConfig(**configKwargs), segments=segments,
        messageCount=count, reactor=reactor, threadpool=threadpool,
        damaged=damaged, readOnly=readOnly, preallocate=preallocate,
    )


def result(testCase, d):
    """
    The result of a Deferred that has fired (or fail the test).
    """
    return testCase.successResultOf(d)


def record(msgId, data, attribute=None):
    body, flag = encodePayload(data, attribute)
    return encodeRecord(msgId, flag, body)


def readPartition(directory):
    """
    The concatenated bytes of a partition's segment files, in order, with
    the file names; without the zeros a running store keeps after the
    records of its last file.
    """
    names = sorted(n for n in os.listdir(directory) if n.endswith(".meta"))
    data = b""
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            data += f.read()
    return names, withoutTail(data)


def withoutTail(data):
    """
    The bytes of a last segment file without the zeros a running store
    keeps after its records: cut at the record boundary from which nothing
    but zeros follows.
    """
    zeros = len(data.rstrip(b"\0"))
    position = 0
    while position < zeros:
        if len(data) - position < HEADER_SIZE:
            return data
        (length,) = struct.unpack_from(">i", data, position)
        position += HEADER_SIZE + max(length, 0)
    return data[:position]
