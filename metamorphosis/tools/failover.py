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
starts over.  C{--root} is C{zk.zkRoot} (default C{/meta}).  Exit status 0
on success, 1 when the record changed under us or does not exist, 2 when
ZooKeeper cannot be reached.
"""

import argparse
import sys

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from metamorphosis import zk
from metamorphosis.ha.failover import FailoverRecord, recordPath


def show(client, paths, brokerId, out):
    path = recordPath(paths, brokerId)
    try:
        data, _ = client.get(path)
        record = FailoverRecord.decode(data)
        out.write("failover record: epoch %d, master %s\n" % (record.epoch, record.master))
    except NoNodeError:
        out.write("failover record: none (no failover for broker %d)\n" % (brokerId,))
    idPath = paths.brokerIdPath(brokerId)
    try:
        children = sorted(client.get_children(idPath))
    except NoNodeError:
        children = []
    for child in children:
        if child == "master" or child.startswith("slave"):
            data, _ = client.get(idPath + "/" + child)
            out.write("registered %s: %s\n" % (child, data.decode("utf-8", "replace")))
    if "master" not in children:
        out.write("registered master: none\n")
    return 0


def promote(client, paths, brokerId, url, out):
    if not url.startswith("meta://"):
        raise SystemExit("the new master must be a meta://host:port URL")
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


def main(argv=None, out=sys.stdout):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zookeeper", required=True, help="ZooKeeper connect string")
    parser.add_argument("--root", default="/meta", help="zk.zkRoot of the brokers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("show", "clear"):
        sub.add_parser(name).add_argument("brokerId", type=int)
    promoting = sub.add_parser("promote")
    promoting.add_argument("brokerId", type=int)
    promoting.add_argument("url", help="meta://host:port of the new master")
    args = parser.parse_args(argv)
    client = KazooClient(hosts=args.zookeeper)
    try:
        client.start(10)
    except Exception as e:
        out.write("cannot reach ZooKeeper %s: %s\n" % (args.zookeeper, e))
        return 2
    try:
        paths = zk.ZkPaths(args.root)
        if args.command == "show":
            return show(client, paths, args.brokerId, out)
        if args.command == "clear":
            return clear(client, paths, args.brokerId, out)
        return promote(client, paths, args.brokerId, args.url, out)
    finally:
        client.stop()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
