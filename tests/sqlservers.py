"""
The database servers the SQL offset-storage tests use: MariaDB and
PostgreSQL at their standard loopback ports (they run on CI), each test in a
table of its own; and a private MariaDB with binary logging for the change
stream tests (L{PrivateMariaDB}).
"""

import os
import shutil
import socket
import subprocess
import tempfile
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


class PrivateMariaDB:
    """
    A MariaDB server of one test, with binary logging in ROW format and
    full row metadata (what C{metaq binlog} follows): its own data
    directory and socket in a temporary directory (under C{/tmp}: a socket
    path must be short) and a free loopback port, created with
    C{mariadb-install-db} and started as C{mariadbd}; killed and removed
    when the test cleans up.

    @ivar port: the port it listens on, once L{start} fired.
    """

    INSTALL = "/usr/bin/mariadb-install-db"
    SERVER = "/usr/sbin/mariadbd"

    def __init__(self, testCase):
        self.testCase = testCase
        self.directory = None
        self.port = None
        self.process = None

    def settings(self, **extra):
        settings = {"host": "127.0.0.1", "port": self.port, "user": "root", "password": ""}
        settings.update(extra)
        return settings

    @property
    def url(self):
        return "mysql://root@127.0.0.1:%d" % (self.port,)

    def connect(self, **extra):
        import pymysql
        return pymysql.connect(**self.settings(**extra))

    async def start(self):
        """
        Install and start the server; wait until it answers.

        @raise SkipTest: MariaDB is not installed.
        """
        from tests.waiting import waitFor
        for program in (self.INSTALL, self.SERVER):
            if not os.access(program, os.X_OK):
                raise SkipTest("%s is not installed (scripts/setup.sh --test)" % (program,))
        self.directory = tempfile.mkdtemp(prefix="metaq-mariadb-")
        self.testCase.addCleanup(shutil.rmtree, self.directory, True)
        data = os.path.join(self.directory, "data")
        log = open(os.path.join(self.directory, "mariadb.log"), "ab")
        subprocess.run([self.INSTALL, "--no-defaults", "--datadir=" + data, "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       stdout=log, stderr=log, check=True)
        self.port = freePort()
        self.process = subprocess.Popen(
            [self.SERVER, "--no-defaults", "--user=root", "--datadir=" + data,
             "--socket=" + os.path.join(self.directory, "mariadb.sock"),
             "--pid-file=" + os.path.join(self.directory, "mariadb.pid"),
             "--port=%d" % (self.port,), "--bind-address=127.0.0.1", "--skip-name-resolve",
             "--log-bin=mariadb-bin", "--binlog-format=ROW", "--binlog-row-metadata=FULL",
             "--server-id=1", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M"],
            stdout=log, stderr=log)
        log.close()
        self.testCase.addCleanup(self.stop)

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError("mariadbd exited with %s; see %s/mariadb.log"
                                   % (self.process.returncode, self.directory))
            try:
                self.connect().close()
            except Exception:
                return False
            return True
        await waitFor(answers, timeout=60, what="the private MariaDB answering")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def freePort():
    """
    A loopback port free now (bound, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
