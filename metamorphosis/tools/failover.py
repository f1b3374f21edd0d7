"""
Manual failover: show or change which broker is the master of a broker id
(docs/ha.md, "Failover").

    python -m metamorphosis.tools.failover --zookeeper HOST:PORT show 2
    python -m metamorphosis.tools.failover --zookeeper HOST:PORT promote 2 meta://10.0.0.7:8123
    python -m metamorphosis.tools.failover --zookeeper HOST:PORT clear 2

C{promote} writes the failover record naming the given broker (epoch + 1):
an async slave at that address promotes itself within a second, and a
master at any other address is fenced (stops taking writes and leaves
ZooKeeper).  Use it as well to re-admit a master that moved.  C{clear}
removes the record: no broker is fenced any more and automatic promotion
starts over.  C{--zk-root} is C{zk.zkRoot} (default C{/meta}).  Exit status
0 on success, 1 when the record changed under us or does not exist or
ZooKeeper cannot be reached, 2 on bad usage.

C{show} prints the state of the pair (or group) of brokers of that id:
the record with its epoch and node version, the registered master, and
for every broker taking part in failover its role (C{master}, C{slave},
C{fenced}), the replication link as it sees it, and the age of its state
node (a live master rewrites it every 0.3 s).
"""

import json
import sys
import time

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from twisted.internet.threads import deferToThread
from twisted.python import usage

from metamorphosis import zk
from metamorphosis.ha.failover import LINK_HEARTBEAT_KEY, FailoverRecord, recordPath, statesPath
from metamorphosis.tools.cli import ToolError, Verbosity, inheritShared, openZooKeeper, runAlias

#: A master's state node older than this is not beating (it is rewritten
#: every 0.3 s).
STALE_SECONDS = 2.0


def show(client, paths, brokerId, out, now=time.time):
    """
    The state of the brokers of C{brokerId}: the record (epoch, node
    version), the registered master, and every broker's state node - role
    (master, slave, fenced), the replication link as that broker sees it,
    and how long ago it last wrote it (a master rewrites it every 0.3 s
    while alive; ages use this host's clock against ZooKeeper's).
    """
    path = recordPath(paths, brokerId)
    record = None
    try:
        data, stat = client.get(path)
        record = FailoverRecord.decode(data)
        out.write(
            "failover record: epoch %d, master %s (node version %d)\n" % (record.epoch, record.master, stat.version)
        )
    except NoNodeError:
        out.write("failover record: none (no failover for broker %d)\n" % (brokerId,))
    idPath = paths.brokerIdPath(brokerId)
    try:
        children = sorted(client.get_children(idPath))
    except NoNodeError:
        children = []
    registered = None
    for child in children:
        if child == "master" or child.startswith("slave"):
            data, _ = client.get(idPath + "/" + child)
            url = data.decode("utf-8", "replace")
            if child == "master":
                registered = url
            out.write("registered %s: %s\n" % (child, url))
    if "master" not in children:
        out.write("registered master: none\n")
    elif record is not None and registered != record.master:
        out.write("  (not the master the record names: an old session, until it expires)\n")
    states = statesPath(paths, brokerId)
    try:
        names = sorted(client.get_children(states))
    except NoNodeError:
        names = []
    for name in names:
        try:
            data, stat = client.get(states + "/" + name)
            state = json.loads(data.decode("utf-8"))
        except NoNodeError:
            continue
        except ValueError:
            out.write("broker meta://%s: unreadable state %r\n" % (name, data))
            continue
        out.write("broker meta://%s: %s\n" % (name, describeState(state, now() - stat.mtime / 1000.0)))
    return 0


def describeState(state, age):
    """
    One broker's state node in words.
    """
    role = state.get("role", "?")
    words = [role]
    if state.get("epoch") is not None:
        words.append("epoch %s" % (state["epoch"],))
    if "slave_link" in state:
        words.append("link to slave %s" % (state["slave_link"],))
    if "slave_continuous_failures" in state:
        words.append("%s failed syncs in a row" % (state["slave_continuous_failures"],))
    if LINK_HEARTBEAT_KEY in state:
        words.append("heartbeat to slave every %s ms" % (state[LINK_HEARTBEAT_KEY],))
    if "link" in state:
        words.append("link from master %s" % (state["link"],))
    if "replication_lag_bytes" in state:
        words.append("lag %s bytes" % (state["replication_lag_bytes"],))
    words.append("written %.1f s ago" % (max(age, 0.0),))
    if role == "master" and age > STALE_SECONDS:
        words.append("NOT BEATING (dead or cut off from ZooKeeper; its node goes when its session expires)")
    return ", ".join(words)


def promote(client, paths, brokerId, url, out):
    if not url.startswith("meta://"):
        raise ToolError("the new master must be a meta://host:port URL")
    path = recordPath(paths, brokerId)
    try:
        data, stat = client.get(path)
        record = FailoverRecord.decode(data)
        new = FailoverRecord(record.epoch + 1, url)
        client.set(path, new.encode(), stat.version)
    except NoNodeError:
        new = FailoverRecord(1, url)
        try:
            client.create(path, new.encode(), makepath=True)
        except NodeExistsError:
            out.write("the failover record appeared meanwhile; try again\n")
            return 1
    except BadVersionError:
        out.write("the failover record changed meanwhile; try again\n")
        return 1
    out.write("broker %d: master is now %s (epoch %d)\n" % (brokerId, url, new.epoch))
    return 0


def clear(client, paths, brokerId, out):
    try:
        client.delete(recordPath(paths, brokerId))
    except NoNodeError:
        out.write("no failover record for broker %d\n" % (brokerId,))
        return 1
    out.write("failover record of broker %d removed\n" % (brokerId,))
    return 0


class BrokerIdOptions(usage.Options):
    synopsis = "BROKER_ID"

    def parseArgs(self, brokerId):
        try:
            self["brokerId"] = int(brokerId)
        except ValueError:
            raise usage.UsageError("the broker id must be an integer, not %r" % (brokerId,))


class PromoteOptions(BrokerIdOptions):
    synopsis = "BROKER_ID meta://HOST:PORT"

    def parseArgs(self, brokerId, url):
        BrokerIdOptions.parseArgs(self, brokerId)
        self["url"] = url


class Options(Verbosity, usage.Options):
    synopsis = "--zookeeper HOST:PORT (show|promote|clear) BROKER_ID [URL]"
    longdesc = __doc__.split("\n\n")[0].strip()
    optParameters = [
        ["zookeeper", "z", None, "ZooKeeper connect string (required)"],
        ["zk-root", None, "/meta", "zk.zkRoot of the brokers"],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper", float],
    ]
    subCommands = [
        ["show", None, BrokerIdOptions, "the state of the brokers of an id: record, registered master, "
         "each broker's role, link and last beat"],
        ["promote", None, PromoteOptions, "name the new master of a broker id (manual failover)"],
        ["clear", None, BrokerIdOptions, "remove the failover record"],
    ]

    def opt_root(self, root):
        """
        The same as --zk-root (its old name).
        """
        self["zk-root"] = root

    def postOptions(self):
        inheritShared(self)
        if not self["zookeeper"]:
            raise usage.UsageError("--zookeeper is required")
        if self.subCommand is None:
            raise usage.UsageError("a command is required: show, promote or clear")


async def main(reactor, options, out=None):
    out = out or sys.stdout
    client = await openZooKeeper(reactor, options["zookeeper"], options["timeout"])
    try:
        paths = zk.ZkPaths(zk.normalizeRoot(options["zk-root"]))
        arguments = options.subOptions
        if options.subCommand == "show":
            return await deferToThread(show, client, paths, arguments["brokerId"], out)
        if options.subCommand == "clear":
            return await deferToThread(clear, client, paths, arguments["brokerId"], out)
        return await deferToThread(
            promote, client, paths, arguments["brokerId"], arguments["url"], out)
    finally:
        await zk.disconnect(client, reactor)


def run(argv=None):
    runAlias("metaq-failover", "failover", Options(), main, argv)


if __name__ == "__main__":
    run()
