"""
What the change-stream tests share: the tools as processes that can be
killed with SIGKILL and started again, a private PostgreSQL schema, and
the tables both databases hold.
"""

import os
import sys
import uuid

from twisted.internet import defer, error, protocol, reactor
from twisted.python import log
from twisted.trial.unittest import SkipTest

# The source tables (MariaDB) and their replicas (PostgreSQL): one with a
# single-column key and most column types, one with a composite key.
MARIADB_TABLES = [
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2), "
    "updated DATETIME(6), data BLOB)",
    "CREATE TABLE pairs (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b))",
]
POSTGRES_TABLES = [
    "CREATE TABLE {schema}.items (id INT PRIMARY KEY, name VARCHAR(40), "
    "price NUMERIC(10,2), updated TIMESTAMP(6), data BYTEA)",
    "CREATE TABLE {schema}.pairs (a INT, b VARCHAR(10), v INT, PRIMARY KEY (a, b))",
]
QUERIES = {
    "items": "SELECT id, name, price, updated, data FROM {schema}.items ORDER BY id",
    "pairs": "SELECT a, b, v FROM {schema}.pairs ORDER BY a, b",
}


def connectPostgreSQL():
    import psycopg2
    return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                            connect_timeout=3)


def postgresSchema(testCase):
    """
    A PostgreSQL schema of this test holding the replica tables, dropped at
    cleanup.

    @return: its name.
    @raise SkipTest: no PostgreSQL answers.
    """
    try:
        connection = connectPostgreSQL()
    except Exception as e:
        raise SkipTest("no PostgreSQL at 127.0.0.1:5432: %s" % (e,))
    schema = "uc_" + uuid.uuid4().hex[:12]
    with connection, connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA " + schema)
        for statement in POSTGRES_TABLES:
            cursor.execute(statement.format(schema=schema))
    connection.close()

    def drop():
        connection = connectPostgreSQL()
        with connection, connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA %s CASCADE" % (schema,))
        connection.close()
    testCase.addCleanup(drop)
    return schema


def normalise(value):
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def readTables(connection, schema):
    """
    Every row of the test tables, as lists of tuples in key order.
    """
    tables = {}
    with connection.cursor() as cursor:
        for table, query in QUERIES.items():
            cursor.execute(query.format(schema=schema))
            tables[table] = [tuple(normalise(v) for v in row) for row in cursor.fetchall()]
    connection.commit()
    return tables


class ToolProcess(protocol.ProcessProtocol):
    """
    A tool (C{python -m metamorphosis.tools.<name> args}) that the test
    may kill with SIGKILL and start again; stopped with SIGTERM at
    cleanup, its output logged.
    """

    def __init__(self, testCase, name, *args):
        self.name = name
        self.args = list(args)
        self.output = b""
        self.runs = 0
        self.transport = None
        self.ended = None
        testCase.addCleanup(self.stop)

    def start(self):
        self.runs += 1
        self.ended = defer.Deferred()
        self.output += b"--- run %d ---\n" % (self.runs,)
        self.transport = reactor.spawnProcess(
            self, sys.executable,
            [sys.executable, "-m", "metamorphosis.tools." + self.name] + self.args,
            env=os.environ)
        return self

    def outReceived(self, data):
        self.output += data
        log.msg("%s: %s" % (self.name, data.decode("utf-8", "replace").rstrip()))

    errReceived = outReceived

    def processEnded(self, reason):
        log.msg("%s ended: %s" % (self.name, reason.value))
        self.transport = None
        self.ended.callback(reason.value.exitCode)

    @property
    def running(self):
        return self.transport is not None

    def kill(self, signal="KILL"):
        """
        @return: a Deferred firing with the exit status when it is gone.
        """
        if self.transport is None:
            return defer.succeed(None)
        try:
            self.transport.signalProcess(signal)
        except error.ProcessExitedAlready:
            pass
        return self.ended

    def stop(self):
        return self.kill("TERM")
