"""
C{metaq groups}: the consumer groups registered in ZooKeeper.

    metaq -z zk:2181 groups [list]
    metaq -z zk:2181 groups describe GROUP

C{list} shows every group under C{consumers/} with its live consumers and
topics; C{describe} shows, per topic and partition, the committed offset,
the broker's end offset, the lag in bytes and the owning consumer (as
C{metaq offsets --group GROUP} does, with offsets kept in ZooKeeper).
"""

import sys

from twisted.internet import threads
from twisted.python import usage

from metamorphosis.client.offsets import ZooKeeperOffsetStorage
from metamorphosis.tools.cli import Verbosity, inheritShared, openZooKeeper, table
from metamorphosis.tools.offsets import listOffsets, readGroup
from metamorphosis.zk import childrenOf, disconnect, normalizeRoot


class ListOptions(usage.Options):
    synopsis = ""


class DescribeOptions(usage.Options):
    synopsis = "GROUP"

    def parseArgs(self, group):
        self["group"] = group


class Options(Verbosity, usage.Options):
    synopsis = "--zookeeper HOST:PORT [list | describe GROUP]"
    longdesc = __doc__.split("\n\n")[2].replace("\n", " ")
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper host:port[,host:port...] (required)"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["timeout", "t", 10.0, "seconds to wait for ZooKeeper and each broker", float],
    ]
    subCommands = [
        ["list", None, ListOptions, "every group: live consumers, topics"],
        ["describe", None, DescribeOptions, "one group: offsets, lag and owners per partition"],
    ]
    defaultSubCommand = "list"

    def postOptions(self):
        inheritShared(self)
        if not self["zookeeper"]:
            raise usage.UsageError("--zookeeper is required")
        self["zk-root"] = normalizeRoot(self["zk-root"])


def listGroups(client, root):
    """
    C{(group, live consumers, topics)} for every group (blocking: call it
    in a thread).
    """
    rows = []
    for group in childrenOf(client, root + "/consumers"):
        base = "%s/consumers/%s" % (root, group)
        topics = set(childrenOf(client, base + "/offsets")) | set(childrenOf(client, base + "/owners"))
        rows.append((group, len(childrenOf(client, base + "/ids")), sorted(topics)))
    return rows


async def main(reactor, options, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    zookeeper = await openZooKeeper(reactor, options["zookeeper"], options["timeout"])
    try:
        if options.subCommand == "describe":
            group = options.subOptions["group"]
            view = await threads.deferToThread(readGroup, zookeeper, options["zk-root"], group)
            storage = ZooKeeperOffsetStorage(zookeeper, options["zk-root"])
            return await listOffsets(reactor, {"group": group, "timeout": options["timeout"]},
                                     view, storage, out, err)
        rows = await threads.deferToThread(listGroups, zookeeper, options["zk-root"])
        table(out, ("GROUP", "CONSUMERS", "TOPICS"),
              [(group, str(alive), ",".join(topics) or "-") for group, alive, topics in rows])
        return 0
    finally:
        await disconnect(zookeeper, reactor)
