"""
The change stream end to end with real servers: a private MariaDB with
binary logging, ZooKeeper, a broker process, C{metaq binlog} and
C{metaq apply} as processes, PostgreSQL.  Random inserts, updates
(including key changes) and deletes run on MariaDB while each of the three
processes is killed with SIGKILL at random moments and started again; in
the end the PostgreSQL tables equal the MariaDB tables row for row.
"""

import datetime
import decimal
import os
import random
import threading

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python import log
from twisted.trial.unittest import TestCase

from tests.sqlservers import PrivateMariaDB
from tests.tools.support import startBroker
from tests.usecases.support import (
    MARIADB_TABLES,
    ToolProcess,
    connectPostgreSQL,
    postgresSchema,
    readTables,
)
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


class Workload:
    """
    Random transactions on the source tables, in a thread, until stopped.
    """

    def __init__(self, connect, seed):
        self.connect = connect
        self.random = random.Random(seed)
        self.stopped = threading.Event()
        self.transactions = 0
        self.changes = 0
        self.nextId = 1

    def run(self):
        connection = self.connect()
        try:
            while not self.stopped.is_set():
                with connection.cursor() as cursor:
                    for _ in range(self.random.randint(1, 4)):
                        self.change(cursor)
                connection.commit()
                self.transactions += 1
        finally:
            connection.close()

    def change(self, cursor):
        r = self.random
        choice = r.random()
        if choice < 0.35 or self.nextId < 20:
            self.nextId += 1
            cursor.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s)", (
                self.nextId, "item %d" % (self.nextId,),
                decimal.Decimal(r.randint(0, 10 ** 6)) / 100,
                datetime.datetime(2026, 1, 1) + datetime.timedelta(microseconds=r.randint(0, 10 ** 12)),
                r.randbytes(r.randint(0, 20))))
        elif choice < 0.6:
            cursor.execute("UPDATE items SET name = %s, price = price + 1 WHERE id = %s",
                           ("renamed %d" % (r.randint(0, 999),), r.randint(1, self.nextId)))
        elif choice < 0.7:
            # A key change: a delete and an insert for the stream.
            self.nextId += 1
            cursor.execute("UPDATE items SET id = %s WHERE id = %s",
                           (self.nextId, r.randint(1, self.nextId - 1)))
        elif choice < 0.8:
            cursor.execute("DELETE FROM items WHERE id = %s", (r.randint(1, self.nextId),))
        elif choice < 0.95:
            cursor.execute("INSERT INTO pairs VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE "
                           "v = v + 1", (r.randint(0, 30), r.choice("abc"), r.randint(0, 9)))
        else:
            cursor.execute("DELETE FROM pairs WHERE a = %s", (r.randint(0, 30),))
        self.changes += cursor.rowcount


class PipelineTests(TestCase):

    timeout = 300

    def test_crashesEverywhere(self):
        """
        SIGKILL of the publisher, the applier and the broker at random
        moments while MariaDB changes: PostgreSQL ends equal to MariaDB.
        """
        return ensureDeferred(self.crashes(int(os.environ.get("METAQ_USECASES_SECONDS", "25"))))

    async def crashes(self, seconds):
        seed = int(os.environ.get("METAQ_USECASES_SEED", random.randrange(10 ** 6)))
        log.msg("seed %d" % (seed,))
        chaos = random.Random(seed)
        root = uniqueRoot()
        schema = postgresSchema(self)
        mariadb = PrivateMariaDB(self)
        await mariadb.start()
        connection = mariadb.connect()
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE shop")
            cursor.execute("USE shop")
            for statement in MARIADB_TABLES:
                cursor.execute(statement)
        connection.close()
        broker = await startBroker(self, {"changes": 4}, zookeeperAddress(), root)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        binlog = ToolProcess(
            self, "binlog", "--zookeeper", zookeeperAddress(), "--zk-root", root,
            "--topic", "changes", "--partitions", "0:4", "--mysql", mariadb.url,
            "--state", os.path.join(work, "binlog.state"), "--from-beginning",
            "--schema", "shop", "--window", "200").start()
        apply = ToolProcess(
            self, "apply", "--zookeeper", zookeeperAddress(), "--zk-root", root,
            "--topic", "changes", "--postgres",
            "postgresql://postgres@127.0.0.1:5432/test?table=%s_offsets" % (schema,),
            "--schema", "shop=" + schema, "--recover-path", os.path.join(work, "recover"),
            "--commit-interval", "0.1", "--session-timeout", "4").start()

        workload = Workload(lambda: mariadb.connect(database="shop"), seed)
        running = deferToThread(workload.run)
        try:
            deadline = reactor.seconds() + seconds
            while reactor.seconds() < deadline:
                await deferLater(reactor, chaos.uniform(0.5, 3.0), lambda: None)
                victim = chaos.choice(["binlog", "apply", "broker"])
                log.msg("killing %s after %d transactions" % (victim, workload.transactions))
                if victim == "broker":
                    await broker.kill()
                else:
                    status = await {"binlog": binlog, "apply": apply}[victim].kill()
                    self.assertEqual(status, None, "killed by the signal, not exited")
                await deferLater(reactor, chaos.uniform(0.1, 2.0), lambda: None)
                if victim == "broker":
                    await broker.start()
                else:
                    {"binlog": binlog, "apply": apply}[victim].start()
        finally:
            workload.stopped.set()
            await running
        log.msg("%d transactions, %d row changes" % (workload.transactions, workload.changes))

        def supervise():
            # What systemd's Restart=on-failure does: a tool started while
            # the broker was down gives up after --timeout (exit status 1).
            for tool in (binlog, apply):
                if not tool.running:
                    log.msg("restarting %s, which exited" % (tool.name,))
                    tool.start()

        source = mariadb.connect(database="shop")
        replica = connectPostgreSQL()
        try:
            expected = readTables(source, "shop")
            self.assertGreater(len(expected["items"]), 10)

            def equal():
                supervise()
                return readTables(replica, schema) == expected
            try:
                await waitFor(equal, timeout=120, interval=0.5, what="replica equal to source")
            except AssertionError:
                self.assertEqual(readTables(replica, schema), expected)
        finally:
            source.close()
            replica.close()
        self.assertEqual(await binlog.stop(), 0, binlog.output)
        self.assertEqual(await apply.stop(), 0, apply.output)
