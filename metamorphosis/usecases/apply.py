"""
Applying a change stream (L{metamorphosis.usecases.changes}) to PostgreSQL
tables, with the consumer's offsets committed in the same transaction as
the changes.

L{ChangeApplier} is the consumer's listener: it only keeps each change in
memory (the last change of each row: within one transaction only the end
state of a row matters).  L{ApplyingOffsetStorage} is the consumer's offset
storage: at each offset commit (every C{commitOffsetPeriodInMills}, before
a rebalance, at shutdown) it writes the changes kept so far and the offsets
past them in one PostgreSQL transaction.  The consumer moves a partition's
offset past a message only after handing it to the listener, so the
offsets committed never pass a change that is not committed with them:
after a crash of either side the tables and the offsets agree, and the
changes after the offsets are fetched and applied again.  Applying is
idempotent (an insert or update is an upsert of the whole row by primary
key, a delete deletes by primary key), so a change applied twice (the
binlog publisher may send some twice after its own crash) changes nothing.

The offsets are fenced: a commit moves a partition's offset only from the
value this storage last read or wrote.  If another applier moved it
meanwhile (it took the partition over while this one was cut off from
ZooKeeper), the transaction is rolled back and L{OffsetConflict} is raised:
this applier must stop rather than write older rows over newer ones.
"""

import json
from collections import OrderedDict

from twisted.internet import defer
from twisted.logger import Logger

from metamorphosis.client.offsets import SQLOffsetStorage, connectionArguments, remarkModified, takeModified
from metamorphosis.usecases.changes import columnValue, decode


class OffsetConflict(Exception):
    """
    Another consumer moved a partition's offset under this one.
    """


def quoteName(name):
    return '"%s"' % (name.replace('"', '""'),)


class ChangeApplier:
    """
    The listener: keeps the changes received until the storage commits
    them.

    @param schemas: source schema -> PostgreSQL schema; changes of other
        schemas are ignored.  Empty: every schema goes to the PostgreSQL
        schema of the same name.
    @param maxPending: rows kept at most; past it the listener waits for
        the next commit (and asks for one at once).
    """

    log = Logger()

    def __init__(self, schemas=None, maxPending=10000):
        self.schemas = dict(schemas or {})
        self.maxPending = maxPending
        self.consumer = None
        self.applied = 0
        self._pending = OrderedDict()
        self._waiters = []
        self._statements = {}
        self._warned = set()

    def receiveMessages(self, message):
        try:
            bodies = decode(message.data)
        except (ValueError, UnicodeDecodeError) as e:
            self.log.error("Ignoring message {id} of {topic}: {error}", id=message.id,
                           topic=message.topic, error=e)
            return None
        for body in bodies:
            self._keep(body)
        if len(self._pending) >= self.maxPending:
            waiter = defer.Deferred()
            self._waiters.append(waiter)
            if self.consumer is not None:
                self.consumer.commitOffsets().addErrback(lambda f: None)
            return waiter
        return None

    def _keep(self, body):
        if body["type"] == "ddl":
            self.log.info("Not applied (DDL is applied to PostgreSQL by hand): {query}",
                          query=body.get("query"))
            return
        schema = self.target(body["schema"])
        if schema is None:
            return
        key = body.get("primaryKey")
        if not key:
            self._warnOnce(("nokey", body["schema"], body["table"]),
                           "{schema}.{table} has no primary key: its changes are not applied",
                           schema=body["schema"], table=body["table"])
            return
        row = (schema, body["table"], json.dumps(key, sort_keys=True))
        self._pending.pop(row, None)
        self._pending[row] = body

    def target(self, schema):
        if not self.schemas:
            return schema
        return self.schemas.get(schema)

    def _warnOnce(self, key, text, **fields):
        if key not in self._warned:
            self._warned.add(key)
            self.log.error(text, **fields)

    # -- what the storage calls -------------------------------------------

    def take(self):
        """
        @return: the changes kept, in order (one per row); they are
            forgotten until L{restore}d.
        """
        taken, self._pending = list(self._pending.items()), OrderedDict()
        return taken

    def restore(self, taken):
        """
        Keep C{taken} again (their commit failed), before the changes
        received since.
        """
        pending = OrderedDict(taken)
        for row, body in self._pending.items():
            pending.pop(row, None)
            pending[row] = body
        self._pending = pending

    def committed(self, taken):
        self.applied += len(taken)
        if len(self._pending) < self.maxPending:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def apply(self, cursor, taken):
        """
        Execute the changes with C{cursor} (in the storage's transaction).
        """
        for (schema, table, _), body in taken:
            if body["type"] == "delete":
                key = body["primaryKey"]
                sql = self._statement("delete", schema, table, tuple(key), ())
                cursor.execute(sql, [columnValue(v) for v in key.values()])
            else:
                row = body["after"]
                sql = self._statement("upsert", schema, table, tuple(body["primaryKey"]),
                                      tuple(row))
                cursor.execute(sql, [columnValue(v) for v in row.values()])

    def _statement(self, kind, schema, table, keys, columns):
        cacheKey = (kind, schema, table, keys, columns)
        sql = self._statements.get(cacheKey)
        if sql is not None:
            return sql
        target = "%s.%s" % (quoteName(schema), quoteName(table))
        if kind == "delete":
            sql = "DELETE FROM %s WHERE %s" % (
                target, " AND ".join("%s = %%s" % (quoteName(k),) for k in keys))
        else:
            others = [c for c in columns if c not in keys]
            action = ("DO UPDATE SET " + ", ".join(
                "%s = EXCLUDED.%s" % (quoteName(c), quoteName(c)) for c in others)
                if others else "DO NOTHING")
            sql = "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) %s" % (
                target, ", ".join(quoteName(c) for c in columns),
                ", ".join(["%s"] * len(columns)), ", ".join(quoteName(k) for k in keys), action)
        self._statements[cacheKey] = sql
        return sql


class ApplyingOffsetStorage(SQLOffsetStorage):
    """
    A PostgreSQL offset storage whose commits carry the changes of a
    L{ChangeApplier} in the same transaction (and are fenced, see the
    module doc).

    @ivar conflict: a Deferred that fails with L{OffsetConflict} when a
        commit found another consumer's offset.
    """

    log = Logger()

    def __init__(self, applier, *connargs, **connkw):
        super().__init__("psycopg2", *connargs, **connkw)
        self.applier = applier
        self.conflict = defer.Deferred()
        self._known = {}
        self._fencedUpdate = self._updateSQL + " and %s=%%s" % (quoteName("offset"),)
        self._current = self._select

    @classmethod
    def fromURL(cls, url, applier, **kw):
        """
        @param url: C{postgresql://user:password@host:port/database}, with
            C{?table=name} for the offsets table.
        """
        dbapiName, connargs, connkw = connectionArguments(url)
        if dbapiName != "psycopg2":
            raise ValueError("The applier needs a postgresql:// URL, not %r" % (url,))
        connkw.update(kw)
        return cls(applier, *connargs, **connkw)

    async def _remembered(self, topic, group, partition, loading):
        info = await loading
        key = (topic, str(partition), group)
        self._known[key] = info.offset if info is not None else None
        return info

    def load(self, topic, group, partition):
        return defer.ensureDeferred(self._remembered(
            topic, group, partition, super().load(topic, group, partition)))

    def initOffset(self, topic, group, partition, offset):
        d = super().initOffset(topic, group, partition, offset)

        def remember(result):
            self._known[(topic, str(partition), group)] = offset
            return result
        return d.addCallback(remember)

    def commitOffset(self, group, offsets):
        return defer.ensureDeferred(self._commit(group, offsets))

    async def _commit(self, group, offsets):
        batch = takeModified(offsets)
        taken = self.applier.take()
        if not batch and not taken:
            return
        try:
            await self._table()
            await self.pool.runInteraction(self._write, group, batch, taken)
        except BaseException as e:
            remarkModified(None, batch)
            self.applier.restore(taken)
            if isinstance(e, OffsetConflict) and not self.conflict.called:
                self.conflict.errback(e)
            raise
        for info, offset, _ in batch:
            self._known[(info.topic, str(info.partition), group)] = offset
        self.applier.committed(taken)

    def _write(self, cursor, group, batch, taken):
        self.applier.apply(cursor, taken)
        for info, offset, messageId in batch:
            key = (info.topic, str(info.partition), group)
            if key not in self._known:
                self.writeOffsets(cursor, group, [(info, offset, messageId)])
                continue
            cursor.execute(self._fencedUpdate, (offset, messageId) + key + (self._known[key],))
            if cursor.rowcount:
                continue
            cursor.execute(self._current, key)
            found = cursor.fetchone()
            if found is not None:
                raise OffsetConflict(
                    "the offset of %s/%s for group %s is %s, not %s as this applier left it: "
                    "another consumer moved it" % (key[0], key[1], group, found[0],
                                                   self._known[key]))
            self.writeOffsets(cursor, group, [(info, offset, messageId)])
