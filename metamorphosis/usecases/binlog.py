"""
Following a MySQL/MariaDB binary log as a replica does and turning it into
row changes (L{metamorphosis.usecases.changes}).

L{BinlogSource} is used from one thread only (the blocking reads of the
C{mysql-replication} library never run on the reactor): each L{read} call
returns the changes of the events read, and the I{checkpoints}, the
positions where a reader may start again: the ends of transactions and of
DDL statements.  A restart from a checkpoint re-reads whole transactions,
never half of one (a rows event needs the table map event before it).

The library reconnects by itself when the server drops the connection,
from the last event it read, even in the middle of a transaction, where
the rows of the tables mapped before would then be skipped.  A
reconnection shows as a rotate event (the server sends one first on every
connection); inside a transaction it makes L{read} raise
L{ReconnectedInTransaction}, and the caller starts a new source from the
last checkpoint, skipping the events it already has.
"""

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from metamorphosis.usecases.changes import ddlChange, rowChanges

_ROWS = {WriteRowsEvent: "insert", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}

# Statements of the binlog that are not DDL: transaction control.
_NOT_DDL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT", "XA ")


class BinlogError(Exception):
    """
    The database refuses to be followed (binary logging off, the wrong
    format, no row metadata): a configuration to fix, not an outage.
    """


class ReconnectedInTransaction(Exception):
    """
    The library reconnected in the middle of a transaction: start again
    from the last checkpoint.
    """


class Checkpoint:
    """
    A position where reading may start again: C{(file, pos)}.
    """

    __slots__ = ("position",)

    def __init__(self, position):
        self.position = position

    def __repr__(self):
        return "<Checkpoint %s:%d>" % self.position


def checkServer(settings):
    """
    Check that the server writes a binary log this reader can follow.

    @return: C{(file, pos)}, the end of its binary log now.
    @raise BinlogError: binary logging off, not in ROW format, or without
        full row metadata (column names).
    @raise pymysql.MySQLError: the server cannot be reached.
    """
    connection = pymysql.connect(**settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@log_bin, @@binlog_format, @@binlog_row_metadata")
            logBin, binlogFormat, rowMetadata = cursor.fetchone()
            if not int(logBin):
                raise BinlogError("binary logging is off on the server (start it with --log-bin)")
            if binlogFormat != "ROW":
                raise BinlogError("binlog_format is %s; row changes need "
                                  "--binlog-format=ROW" % (binlogFormat,))
            if rowMetadata != "FULL":
                raise BinlogError("binlog_row_metadata is %s; column names need "
                                  "--binlog-row-metadata=FULL" % (rowMetadata,))
            cursor.execute("SHOW MASTER STATUS")
            status = cursor.fetchone()
            return status[0], int(status[1])
    finally:
        connection.close()


def firstPosition(settings):
    """
    The start of the oldest binary log the server still has.
    """
    connection = pymysql.connect(**settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW BINARY LOGS")
            return cursor.fetchone()[0], 4
    finally:
        connection.close()


class BinlogSource:
    """
    A replica connection to the server from C{position} on.

    @param settings: pymysql connection arguments (host, port, user,
        passwd...).
    @param serverId: this replica's server id, unique among the server's
        replicas.
    @param position: C{(file, pos)}, a checkpoint.
    @param skipThrough: events at or before this position are read but not
        returned (they were returned by the source this one replaces).
    @param schemas: publish only these schemas (all when empty).
    @param tables: publish only these tables (C{schema.table} names; all
        when empty).
    @param heartbeat: seconds between the server's heartbeats when idle, so
        that L{read} returns at least that often.
    """

    def __init__(self, settings, serverId, position, skipThrough=None, schemas=(), tables=(),
                 heartbeat=1.0):
        self.settings = settings
        self.position = position
        self.skipThrough = skipThrough
        self.schemas = set(schemas)
        self.tables = set(tables)
        self.inTransaction = False
        self.gtid = None
        self._stream = BinLogStreamReader(
            connection_settings=dict(settings), server_id=serverId,
            log_file=position[0], log_pos=position[1], resume_stream=True, blocking=True,
            slave_heartbeat=heartbeat, is_mariadb=True,
            only_events=[RotateEvent, MariadbGtidEvent, QueryEvent, XidEvent, HeartbeatLogEvent,
                         WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
        self._file = position[0]
        self._connected = False

    def wanted(self, schema, table=None):
        if self.schemas and schema not in self.schemas:
            return False
        if table is not None and self.tables and "%s.%s" % (schema, table) not in self.tables:
            return False
        return True

    def read(self, limit):
        """
        Read events until about C{limit} items are collected or a heartbeat
        (or any idle second) comes.

        @return: a list of L{Change}s and L{Checkpoint}s, in log order.
        @raise ReconnectedInTransaction: see the module doc.
        @raise pymysql.MySQLError: the connection failed.
        """
        items = []
        for event in self._stream:
            done = self._handle(event, items)
            if done or len(items) >= limit:
                break
        return items

    def _handle(self, event, items):
        if isinstance(event, HeartbeatLogEvent):
            return True
        if isinstance(event, RotateEvent):
            if self._connected and self.inTransaction:
                raise ReconnectedInTransaction(
                    "the binlog connection was re-made inside a transaction at %s:%d"
                    % (self._file, self.position[1]))
            self._connected = True
            self._file = event.next_binlog
            return False
        position = (self._file, event.packet.log_pos)
        # File names share a base and differ by a zero-padded counter, so
        # positions compare in log order as tuples.
        old = self.skipThrough is not None and position <= self.skipThrough
        if isinstance(event, MariadbGtidEvent):
            self.inTransaction = True
            self.gtid = event.gtid
        elif isinstance(event, XidEvent):
            self._checkpoint(position, old, items)
        elif isinstance(event, QueryEvent):
            query = event.query.strip()
            if query.upper().startswith(_NOT_DDL):
                if query.upper() == "BEGIN":
                    self.inTransaction = True
                elif query.upper() == "COMMIT":
                    self._checkpoint(position, old, items)
                return False
            schema = _text(event.schema)
            if not old and self.wanted(schema):
                items.append(ddlChange(schema, query, position, event.timestamp, self.gtid))
            self._checkpoint(position, old, items)
        else:
            kind = _ROWS.get(type(event))
            if kind is not None and not old and self.wanted(event.schema, event.table):
                items.extend(rowChanges(kind, event.schema, event.table, event.primary_key,
                                        event.rows, position, event.timestamp, self.gtid))
        return False

    def _checkpoint(self, position, old, items):
        self.inTransaction = False
        self.gtid = None
        self.position = position
        if not old:
            items.append(Checkpoint(position))

    def close(self):
        self._stream.close()


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""
