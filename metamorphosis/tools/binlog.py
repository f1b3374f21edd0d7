"""
Follow a MySQL/MariaDB binary log as a replica and publish every row
change, in order per row, to a topic (docs/usecases.md).

    python -m metamorphosis.tools.binlog --zookeeper 127.0.0.1:2181 --topic changes \\
        --partitions 0:4 --mysql mysql://root@127.0.0.1:3306 --state binlog.state

The server must log in ROW format with full row metadata
(C{--log-bin --binlog-format=ROW --binlog-row-metadata=FULL}).
"""

import os
import zlib
from urllib.parse import unquote, urlsplit

import pymysql
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from metamorphosis.client.partition import parsePartitionsInfo
from metamorphosis.client.selectors import OrderedPartitionSelector
from metamorphosis.tools.cli import ToolError, Verbosity, checkBrokerSource, inheritShared, runTool
from metamorphosis.tools.tail import StateFile, startProducer
from metamorphosis.usecases.binlog import BinlogError, BinlogSource, checkServer, firstPosition
from metamorphosis.usecases.publish import Backoff, ChangePublisher

log = Logger()


def mysqlSettings(url):
    """
    pymysql connection arguments from C{mysql://user:password@host:port}.

    @raise usage.UsageError: not such a URL.
    """
    parts = urlsplit(url)
    if parts.scheme != "mysql" or not parts.hostname:
        raise usage.UsageError("--mysql takes mysql://user:password@host:port, not %r" % (url,))
    return {"host": parts.hostname, "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""), "connect_timeout": 10}


def rowKey(message):
    """
    The key the ordered producer's selector hashes: the change's table and
    primary key (see L{metamorphosis.usecases.changes.partitionKey}).
    """
    return message.partitionKey


class Options(Verbosity, usage.Options):
    synopsis = ("--topic TOPIC --partitions BROKER:COUNT "
                "(--zookeeper HOST:PORT | --broker URL) --mysql URL [options]")
    optFlags = [
        ["from-beginning", None, "without a saved position, start at the oldest binary log "
                                 "(default: at its end)"],
    ]
    optParameters = [
        ["topic", "t", None, "the topic to publish to (required)"],
        ["partitions", "p", None, "the topic's partitions the changes are spread over, as "
                                  "BROKERID:COUNT[;BROKERID:COUNT...] (required; never change "
                                  "it while changes are in flight: a row's partition depends "
                                  "on it)"],
        ["zookeeper", "z", None, "find the brokers in this ZooKeeper (host:port[,...])"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "send to this broker directly (meta://host:port)"],
        ["mysql", "m", "mysql://root@127.0.0.1:3306", "the database server to follow"],
        ["server-id", None, None, "this replica's server id, unique among the server's "
                                  "replicas (default: derived from --state)", int],
        ["state", "s", None, "the position file (required)"],
        ["start", None, None, "without a saved position, start at FILE:POS"],
        ["local-messages", None, None, "where the ordered producer keeps changes while their "
                                       "partition is unavailable (default: STATE.kept)"],
        ["window", "w", 1000, "changes read and not yet acknowledged, at most", int],
        ["batch", None, 100, "changes of one table and partition sent in one message, at "
                             "most (1: one message per change)", int],
        ["kept-limit", None, 10000, "stop reading while this many changes wait on local "
                                    "disk for their broker", int],
        ["heartbeat", None, 1.0, "seconds between the server's heartbeats when idle", float],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper and the brokers at start", float],
    ]

    def __init__(self):
        super().__init__()
        self["schemas"] = []
        self["tables"] = []

    def opt_schema(self, name):
        """
        Publish only this schema (repeatable; default: all)
        """
        self["schemas"].append(name)

    def opt_table(self, name):
        """
        Publish only this SCHEMA.TABLE (repeatable; default: all)
        """
        if "." not in name:
            raise usage.UsageError("--table takes SCHEMA.TABLE, not %r" % (name,))
        self["tables"].append(name)

    def postOptions(self):
        inheritShared(self)
        for name in ("topic", "partitions", "state"):
            if not self[name]:
                raise usage.UsageError("--%s is required" % (name,))
        checkBrokerSource(self)
        try:
            partitions = parsePartitionsInfo(self["topic"], self["partitions"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if not partitions:
            raise usage.UsageError("--partitions names no partition")
        self["partitions-info"], self["partitions"] = self["partitions"], len(partitions)
        self["settings"] = mysqlSettings(self["mysql"])
        self["state"] = os.path.abspath(self["state"])
        if self["server-id"] is None:
            self["server-id"] = 1024 + zlib.crc32(self["state"].encode("utf-8")) % (2 ** 30)
        if self["local-messages"] is None:
            self["local-messages"] = self["state"] + ".kept"
        if self["start"]:
            file, sep, pos = self["start"].rpartition(":")
            if not sep or not pos.isdigit():
                raise usage.UsageError("--start takes FILE:POS")
            self["start"] = (file, int(pos))
        for name in ("window", "kept-limit", "batch"):
            if self[name] < 1:
                raise usage.UsageError("--%s must be at least 1" % (name,))


async def serverEnd(reactor, settings):
    """
    Check the server (in a thread), waiting for it while it is down.

    @return: C{(file, pos)}, the end of its binary log.
    @raise ToolError: it does not log as needed.
    """
    backoff = Backoff()
    failing = False
    while True:
        try:
            return await deferToThread(checkServer, settings)
        except BinlogError as e:
            raise ToolError(str(e))
        except pymysql.MySQLError as e:
            delay = backoff.next()
            if not failing:
                failing = True
                log.warn("Cannot reach the database at {host}:{port} ({error}); retrying",
                         host=settings["host"], port=settings["port"], error=e)
            await task.deferLater(reactor, delay, lambda: None)


async def main(reactor, options):
    settings = options["settings"]
    state = StateFile(options["state"], reactor)
    saved = state.load()
    end = await serverEnd(reactor, settings)
    if saved is not None:
        position = (saved[0], saved[1])
    elif options["start"]:
        position = options["start"]
    elif options["from-beginning"]:
        position = await deferToThread(firstPosition, settings)
    else:
        position = end
    topic = options["topic"]
    partitionsInfo = {topic: options["partitions-info"]}

    def createProducer(session):
        selector = OrderedPartitionSelector(session.config.orderedPartitions(), key=rowKey)
        return session.createOrderedProducer(selector)

    session, producer = await startProducer(
        reactor, options, createProducer, partitionsInfo=partitionsInfo,
        localMessagePath=options["local-messages"], recoverMessageIntervalInMills=5000)

    def openSource(start, skipThrough):
        return BinlogSource(settings, options["server-id"], start, skipThrough,
                            options["schemas"], options["tables"], options["heartbeat"])

    publisher = ChangePublisher(openSource, position, producer, topic, state, reactor,
                                window=options["window"], keptLimit=options["kept-limit"],
                                batchSize=options["batch"])

    async def shutDown():
        await publisher.stopService()
        await session.close()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutDown()))
    log.info("Publishing the binlog of {host}:{port} from {file}:{pos} to {topic}",
             host=settings["host"], port=settings["port"], file=position[0], pos=position[1],
             topic=topic)
    publisher.startService()
    try:
        await publisher.failed
    except BinlogError as e:
        raise ToolError(str(e))


def run(argv=None):
    runTool("metaq binlog", Options(), main, argv, defaultLevel=LogLevel.info)


if __name__ == "__main__":
    run()
