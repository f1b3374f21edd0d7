"""
Apply a change stream published by C{metaq binlog} to PostgreSQL tables,
as one member of a consumer group, with the group's offsets committed in
the same transaction as the changes (docs/usecases.md).

    python -m metamorphosis.tools.apply --zookeeper 127.0.0.1:2181 --topic changes \\
        --postgres postgresql://postgres@127.0.0.1:5432/replica --schema shop=public
"""

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from metamorphosis.client.consumer import ConsumerConfig, checkGroup
from metamorphosis.client.offsets import DEFAULT_TABLE
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.tools.cli import ToolError, Verbosity, inheritShared, runTool
from metamorphosis.usecases.apply import ApplyingOffsetStorage, ChangeApplier, OffsetConflict

log = Logger()


class Options(Verbosity, usage.Options):
    synopsis = ("--topic TOPIC --zookeeper HOST:PORT --postgres URL "
                "[--schema SOURCE=TARGET ...] [options]")
    optParameters = [
        ["topic", "t", None, "the change topic (required)"],
        ["group", "g", "metaq-apply", "the consumer group"],
        ["zookeeper", "z", None, "ZooKeeper (host:port[,...]) (required)"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["postgres", "p", None, "the target database, postgresql://user:password@host:port/db "
                                "(required)"],
        ["offsets-table", None, None, "the table of the group's offsets, in the target "
                                      "database (default: the URL's ?table=, else %s)"
         % (DEFAULT_TABLE,)],
        ["commit-interval", None, 0.2, "seconds between transactions", float],
        ["max-pending", None, 10000, "rows received and not yet committed, at most", int],
        ["fetch-size", None, 1024 * 1024, "bytes fetched at a time per partition", int],
        ["recover-path", None, None, "the consumer's local recovery directory"],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper at start", float],
        ["session-timeout", None, 10.0, "the ZooKeeper session timeout, in seconds: how long "
                                        "the partitions of an applier that died stay owned",
         float],
    ]

    def __init__(self):
        super().__init__()
        self["schemas"] = {}

    def opt_schema(self, mapping):
        """
        Apply the changes of SOURCE to the PostgreSQL schema TARGET
        (SOURCE=TARGET, repeatable; other schemas are ignored).  Default:
        every schema to the schema of the same name
        """
        source, sep, target = mapping.partition("=")
        if not source:
            raise usage.UsageError("--schema takes SOURCE=TARGET, not %r" % (mapping,))
        self["schemas"][source] = target if sep else source

    def postOptions(self):
        inheritShared(self)
        for name in ("topic", "zookeeper", "postgres"):
            if not self[name]:
                raise usage.UsageError("--%s is required" % (name,))
        try:
            checkGroup(self["group"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if not self["commit-interval"] > 0:
            raise usage.UsageError("--commit-interval must be positive")
        for name in ("max-pending", "fetch-size"):
            if self[name] < 1:
                raise usage.UsageError("--%s must be at least 1" % (name,))


async def main(reactor, options):
    applier = ChangeApplier(options["schemas"], options["max-pending"])
    try:
        table = {"table": options["offsets-table"]} if options["offsets-table"] else {}
        storage = ApplyingOffsetStorage.fromURL(options["postgres"], applier, **table)
    except ValueError as e:
        raise ToolError(str(e))
    session = MetaMessageSessionFactory(MetaClientConfig(
        zkConnect=options["zookeeper"], zkRoot=options["zk-root"],
        zkConnectionTimeoutMs=int(options["timeout"] * 1000),
        zkSessionTimeoutMs=int(options["session-timeout"] * 1000)), reactor)
    try:
        await session.start()
    except Exception as e:
        await storage.close()
        raise ToolError("cannot connect to ZooKeeper at %s: %s"
                        % (options["zookeeper"], e or type(e).__name__))
    config = ConsumerConfig(
        options["group"], commitOffsetPeriodInMills=max(1, int(options["commit-interval"] * 1000)),
        maxDelayFetchTimeInMills=1000, recoverPath=options["recover-path"])
    consumer = session.createConsumer(config, offsetStorage=storage)
    applier.consumer = consumer
    consumer.subscribe(options["topic"], options["fetch-size"], applier)
    reactor.addSystemEventTrigger("before", "shutdown", session.close)
    await consumer.completeSubscribe()
    log.info("Applying {topic} to {url} as group {group}", topic=options["topic"],
             url=options["postgres"], group=options["group"])
    try:
        await storage.conflict
    except OffsetConflict as e:
        await defer.maybeDeferred(session.close)
        raise ToolError(str(e))


def run(argv=None):
    runTool("metaq apply", Options(), main, argv, defaultLevel=LogLevel.info)


if __name__ == "__main__":
    run()
