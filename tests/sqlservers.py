"""
The database servers the SQL offset-storage tests use: MariaDB and
PostgreSQL at their standard loopback ports (they run on CI), each test in a
table of its own.
"""

import uuid

from twisted.trial.unittest import SkipTest


class SQLServer:
    """
    One database server: how to reach it through the DB-API, and the URL our
    L{metamorphosis.client.offsets.SQLOffsetStorage} takes for it.
    """

    def __init__(self, name, url, connect):
        self.name = name
        self.url = url
        self.connect = connect

    def scratchTable(self, testCase, prefix):
        """
        A table name no other test uses, dropped when C{testCase} cleans up.

        @raise SkipTest: no server answers.
        """
        try:
            self.connect().close()
        except Exception as e:
            raise SkipTest("no %s server answers at %s: %s" % (self.name, self.url, e))
        table = prefix + uuid.uuid4().hex[:12]
        testCase.addCleanup(self._drop, table)
        return table

    def _drop(self, table):
        connection = self.connect()
        try:
            connection.cursor().execute("drop table if exists " + table)
            connection.commit()
        finally:
            connection.close()


def _connectMariaDB():
    import pymysql
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test",
                           connect_timeout=3)


def _connectPostgreSQL():
    import psycopg2
    return psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                            connect_timeout=3)


MARIADB = SQLServer("MySQL/MariaDB", "mysql://root@127.0.0.1:3306/test", _connectMariaDB)
POSTGRESQL = SQLServer("PostgreSQL", "postgresql://postgres@127.0.0.1:5432/test",
                       _connectPostgreSQL)
