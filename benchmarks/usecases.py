"""
End-to-end throughput of the change stream: COUNT row changes (inserts,
then updates of the same rows, in transactions of BATCH rows) written to a
private MariaDB with binary logging, published by C{metaq binlog} to a
broker (ZooKeeper, 4 partitions, MetaQ's default flush policy or group commit) and applied to PostgreSQL
(127.0.0.1:5432, database C{test}, a scratch schema) by C{metaq apply}.
Both tools run as processes from the start; the clock runs from the first
write until PostgreSQL holds the final state of every row.  Also printed:
when the publisher's saved position reached the end of the binlog (every
change acknowledged by the broker).

    .venv/bin/python benchmarks/usecases.py
    .venv/bin/python benchmarks/usecases.py --unflush-threshold 0 --partitions 16
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ha.processes import serverIni  # noqa: E402
from tests.sqlservers import PrivateMariaDB  # noqa: E402
from tests.usecases.support import connectPostgreSQL  # noqa: E402


class Cleanups:
    """
    What L{PrivateMariaDB} expects of a test case: cleanups, run at exit.
    """

    def __init__(self):
        self.calls = []

    def addCleanup(self, function, *args):
        self.calls.append((function, args))

    def run(self):
        for function, args in reversed(self.calls):
            try:
                function(*args)
            except Exception as e:
                print("cleanup failed: %s" % (e,), file=sys.stderr)


def startMariaDB(cleanups):
    from twisted.internet import defer, task

    mariadb = PrivateMariaDB(cleanups)

    def run(reactor):
        return defer.ensureDeferred(mariadb.start())
    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return mariadb


def waitUntil(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("%s not reached in %s s" % (what, timeout))
        time.sleep(0.05)
    return time.monotonic()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=20000, help="row changes")
    parser.add_argument("--batch", type=int, default=100, help="rows per transaction")
    parser.add_argument("--unflush-threshold", type=int, default=1000,
                        help="the broker's unflushThreshold: 0 is group commit (a put is "
                             "answered once fsynced), 1000 MetaQ's default")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    cleanups = Cleanups()
    work = tempfile.mkdtemp(prefix="bench-usecases-")
    processes = []
    try:
        zk = subprocess.run(["bash", os.path.join(ROOT, "scripts/zookeeper.sh"), "start",
                             os.path.join(work, "zk")], check=True, capture_output=True,
                            text=True).stdout.strip()
        cleanups.addCleanup(subprocess.run, ["bash", os.path.join(ROOT, "scripts/zookeeper.sh"),
                                             "stop", os.path.join(work, "zk")])
        mariadb = startMariaDB(cleanups)
        connection = mariadb.connect()
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE bench")
            cursor.execute("CREATE TABLE bench.items (id INT PRIMARY KEY, v INT, t VARCHAR(40))")
        schema = "bench_" + uuid.uuid4().hex[:8]
        pg = connectPostgreSQL()
        with pg, pg.cursor() as cursor:
            cursor.execute("CREATE SCHEMA %s" % (schema,))
            cursor.execute("CREATE TABLE %s.items (id INT PRIMARY KEY, v INT, t VARCHAR(40))"
                           % (schema,))

        def dropSchema():
            with pg, pg.cursor() as cursor:
                cursor.execute("DROP SCHEMA %s CASCADE" % (schema,))
        cleanups.addCleanup(dropSchema)

        brokerDir = os.path.join(work, "broker")
        os.makedirs(brokerDir)
        with open(os.path.join(brokerDir, "server.ini"), "w") as f:
            f.write(serverIni(0, (("changes", args.partitions),), zk, "/bench",
                              unflushThreshold=args.unflush_threshold))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        brokerLog = open(os.path.join(work, "broker.log"), "w")
        processes.append(subprocess.Popen(
            [twistd, "--nodaemon", "--pidfile=", "metaq", "--config", "server.ini",
             "--port", "tcp:0:interface=127.0.0.1"], cwd=brokerDir, stdout=brokerLog,
            stderr=brokerLog))
        waitUntil(lambda: "listening on" in open(brokerLog.name).read(), 60, "broker start")
        state = os.path.join(work, "binlog.state")
        toolLog = open(os.path.join(work, "tools.log"), "w")
        tool = [sys.executable, "-m", "metamorphosis.tools.main", "--zookeeper", zk,
                "--zk-root", "/bench"]
        processes.append(subprocess.Popen(
            tool + ["binlog", "--topic", "changes", "--partitions", "0:%d" % (args.partitions,), "--mysql", mariadb.url,
                    "--state", state, "--schema", "bench"], stdout=toolLog, stderr=toolLog))
        processes.append(subprocess.Popen(
            tool + ["apply", "--topic", "changes", "--postgres",
                    "postgresql://postgres@127.0.0.1:5432/test?table=%s_offsets" % (schema,),
                    "--schema", "bench=" + schema], stdout=toolLog, stderr=toolLog))
        waitUntil(lambda: os.path.exists(state), 60, "binlog start")
        time.sleep(3)  # the applier joins its group

        inserts = args.count // 2
        source = mariadb.connect(database="bench")
        started = time.monotonic()
        with source.cursor() as cursor:
            for first in range(0, inserts, args.batch):
                ids = range(first, min(first + args.batch, inserts))
                cursor.executemany("INSERT INTO items VALUES (%s, 0, 'inserted')",
                                   [(i,) for i in ids])
                source.commit()
            for first in range(0, inserts, args.batch):
                cursor.execute("UPDATE items SET v = 1, t = 'updated' WHERE id >= %s AND id < %s",
                               (first, first + args.batch))
                source.commit()
            cursor.execute("SHOW MASTER STATUS")
            end = list(cursor.fetchone()[:2])
        written = time.monotonic()

        def published():
            try:
                with open(state) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                return False
            return [saved["key"], saved["offset"]] == [end[0], int(end[1])]

        def applied():
            with pg, pg.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM %s.items WHERE v = 1" % (schema,))
                return cursor.fetchone()[0] == inserts

        publishedAt = waitUntil(published, 600, "every change published")
        appliedAt = waitUntil(applied, 600, "every change applied")
        changes = 2 * inserts
        print("%d row changes (%d inserts, %d updates) in transactions of %d rows, %d "
              "partitions, unflushThreshold=%d" % (changes, inserts, inserts, args.batch,
                                                   args.partitions, args.unflush_threshold))
        print("written to MariaDB      %6.2f s  %8.0f changes/s"
              % (written - started, changes / (written - started)))
        print("published (acknowledged) %6.2f s  %8.0f changes/s"
              % (publishedAt - started, changes / (publishedAt - started)))
        print("applied to PostgreSQL   %6.2f s  %8.0f changes/s end to end"
              % (appliedAt - started, changes / (appliedAt - started)))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        cleanups.run()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
