"""
The row-change messages of a database change stream: what C{metaq binlog}
publishes and C{metaq apply} consumes.

Each message body is one change, a JSON object (UTF-8), or an array of up
to C{--batch} consecutive changes of one table and partition::

    {"type": "insert" | "update" | "delete" | "ddl",
     "schema": "shop", "table": "items",
     "primaryKey": {"id": 7},            # the row's key columns, null without one
     "before": {...} | null,             # the row before (update, delete)
     "after": {...} | null,              # the row after (insert, update)
     "position": {"file": "mariadb-bin.000003", "pos": 1534, "row": 0},
     "timestamp": 1796364150,            # the event's time, Unix seconds
     "gtid": "0-1-42" | null,            # the transaction's GTID (MariaDB)
     "query": "ALTER TABLE ..."}         # ddl only (and no table, key or rows)

Values are JSON as they come from the binlog: integers, floats, strings
and null as they are; DECIMAL as a string (no precision lost); dates,
datetimes and times as ISO strings (C{"2026-12-04 06:02:30"}); binary
columns (BLOB, BINARY) as C{{"base64": "..."}}; SET as a sorted list.

An update that changes the primary key is published as a delete of the
old key and an insert of the new one (each with C{"cause": "update"}), so
that every message of one key goes to the key's partition and keeps its
order there.  The message attribute is C{"<schema>.<table>"}, so consumers
can filter by table without parsing the body.
"""

import base64
import datetime
import decimal
import json

TYPES = ("insert", "update", "delete", "ddl")


def jsonValue(value):
    """
    A column value as the JSON the stream carries (see the module doc).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _formatDuration(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [jsonValue(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonValue(v) for k, v in value.items()}
    return str(value)


def _formatDuration(delta):
    # MySQL TIME columns come back as timedelta (they may be negative or
    # above 24 hours): [-]HH:MM:SS[.ffffff].
    sign = "-" if delta < datetime.timedelta(0) else ""
    delta = abs(delta)
    seconds = delta.days * 86400 + delta.seconds
    text = "%s%02d:%02d:%02d" % (sign, seconds // 3600, seconds // 60 % 60, seconds % 60)
    if delta.microseconds:
        text += ".%06d" % (delta.microseconds,)
    return text


def jsonRow(row):
    return None if row is None else {name: jsonValue(v) for name, v in row.items()}


def keyColumns(primaryKey):
    """
    The primary-key column names as a list, from the binlog library's form
    (a name, a tuple of names, or empty for a table without one).
    """
    if not primaryKey:
        return []
    if isinstance(primaryKey, str):
        return [primaryKey]
    return list(primaryKey)


def primaryKeyOf(columns, row):
    if not columns or row is None:
        return None
    return {name: jsonValue(row.get(name)) for name in columns}


class Change:
    """
    One message of the stream: its body (a dict in the format above) and
    the text its partition is chosen by.
    """

    __slots__ = ("body", "partitionKey")

    def __init__(self, body):
        self.body = body
        self.partitionKey = partitionKey(body)

    @property
    def attribute(self):
        return "%s.%s" % (self.body["schema"], self.body.get("table") or "")

    def encode(self):
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def __repr__(self):
        return "<Change %s>" % (self.encode().decode("utf-8"),)


def partitionKey(body):
    """
    What decides the partition: the schema, table and primary key (so all
    changes of one row stay in order); the table alone for a table without
    a key, and the schema for DDL.
    """
    if body["type"] == "ddl":
        return body["schema"]
    key = body.get("primaryKey")
    table = "%s.%s" % (body["schema"], body["table"])
    if key is None:
        return table
    return table + json.dumps(key, separators=(",", ":"), sort_keys=True)


def rowChanges(kind, schema, table, primaryKey, rows, position, timestamp, gtid):
    """
    The L{Change}s of one binlog rows event.

    @param kind: C{"insert"}, C{"update"} or C{"delete"}.
    @param primaryKey: the table's key columns in the binlog library's form.
    @param rows: the event's rows: dicts with C{values} (insert, delete) or
        C{before_values} and C{after_values} (update).
    @param position: C{(file, pos)} of the event.
    """
    columns = keyColumns(primaryKey)
    changes = []
    row = 0

    def change(type_, before, after, **extra):
        nonlocal row
        body = {"type": type_, "schema": schema, "table": table,
                "primaryKey": primaryKeyOf(columns, after if after is not None else before),
                "before": jsonRow(before), "after": jsonRow(after),
                "position": {"file": position[0], "pos": position[1], "row": row},
                "timestamp": timestamp, "gtid": gtid}
        body.update(extra)
        row += 1
        changes.append(Change(body))

    for values in rows:
        if kind == "update":
            before, after = values["before_values"], values["after_values"]
            if primaryKeyOf(columns, before) != primaryKeyOf(columns, after):
                change("delete", before, None, cause="update")
                change("insert", None, after, cause="update")
            else:
                change("update", before, after)
        elif kind == "insert":
            change("insert", None, values["values"])
        else:
            change("delete", values["values"], None)
    return changes


def ddlChange(schema, query, position, timestamp, gtid):
    return Change({"type": "ddl", "schema": schema, "table": None, "primaryKey": None,
                   "before": None, "after": None, "query": query,
                   "position": {"file": position[0], "pos": position[1], "row": 0},
                   "timestamp": timestamp, "gtid": gtid})


def decode(data):
    """
    Parse a message body: one change (a JSON object) or several (an array
    of them).

    @return: the list of changes (dicts).
    @raise ValueError: not changes of this format.
    """
    body = json.loads(data.decode("utf-8"))
    bodies = body if isinstance(body, list) else [body]
    for body in bodies:
        if not isinstance(body, dict) or body.get("type") not in TYPES or "schema" not in body:
            raise ValueError("not a row change: %r" % (data[:200],))
    return bodies


def columnValue(value):
    """
    A JSON value back to what a DB-API driver takes: C{{"base64": ..}} to
    bytes, everything else as it is (the database converts strings).
    """
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"])
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value
