"""
Tests for retention: delete policies, the Quartz cron parser, and
L{MessageStore.runDeletePolicy}.
"""

import datetime
import os
import zipfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metamorphosis.broker.store.cron import CronExpression, InvalidCronExpression
from metamorphosis.broker.store.errors import OffsetBeforeStart
from metamorphosis.broker.store.interfaces import IDeletePolicy
from metamorphosis.broker.store.retention import (
    ArchiveDeletePolicy,
    DiscardDeletePolicy,
    InvalidDeletePolicy,
    parseAge,
    parseDeletePolicy,
)

from .helpers import ManualThreadPool, makeStore

DAY = 86400


class PolicyParsingTests(SynchronousTestCase):
    def test_ages(self):
        self.assertEqual(parseAge("168"), 168 * 3600)
        self.assertEqual(parseAge("2h"), 7200)
        self.assertEqual(parseAge("30m"), 1800)
        self.assertEqual(parseAge("10s"), 10)
        for bad in ("", "h", "1d", "-1", "1.5"):
            self.assertRaises(InvalidDeletePolicy, parseAge, bad)

    def test_policies(self):
        policy = parseDeletePolicy("delete,168")
        verifyObject(IDeletePolicy, policy)
        self.assertIsInstance(policy, DiscardDeletePolicy)
        self.assertEqual(policy.maxAge, 168 * 3600)
        policy = parseDeletePolicy("archive,10m,true")
        verifyObject(IDeletePolicy, policy)
        self.assertEqual((policy.maxAge, policy.compress), (600, True))
        self.assertFalse(parseDeletePolicy("archive,1s").compress)
        self.assertFalse(parseDeletePolicy("archive,1s,false").compress)
        for bad in ("keep,1", "delete", "delete,1,2", "archive", "archive,x"):
            self.assertRaises(InvalidDeletePolicy, parseDeletePolicy, bad)


class CronTests(SynchronousTestCase):
    def fires(self, expression, start, count=3):
        cron = CronExpression(expression)
        times = []
        moment = start
        for _ in range(count):
            moment = cron.nextFireTime(moment)
            times.append(moment)
        return times

    def test_defaultDeleteWhen(self):
        self.assertEqual(
            self.fires("0 0 6,18 * * ?", datetime.datetime(2026, 11, 26, 6, 0, 0)),
            [
                datetime.datetime(2026, 11, 26, 18, 0),
                datetime.datetime(2026, 11, 27, 6, 0),
                datetime.datetime(2026, 11, 27, 18, 0),
            ],
        )

    def test_steps(self):
        self.assertEqual(
            self.fires("0/20 * * * * ?", datetime.datetime(2026, 1, 1, 0, 0, 50)),
            [
                datetime.datetime(2026, 1, 1, 0, 1, 0),
                datetime.datetime(2026, 1, 1, 0, 1, 20),
                datetime.datetime(2026, 1, 1, 0, 1, 40),
            ],
        )
        self.assertEqual(
            self.fires("0 */15 9-10 * * ?", datetime.datetime(2026, 1, 1, 10, 40), 2),
            [datetime.datetime(2026, 1, 1, 10, 45), datetime.datetime(2026, 1, 2, 9, 0)],
        )

    def test_daysOfWeek(self):
        # 2026-11-28 is a Saturday; 1 = Sunday in Quartz.
        self.assertEqual(
            self.fires("30 15 2 ? * MON-FRI", datetime.datetime(2026, 11, 27, 3, 0), 2),
            [datetime.datetime(2026, 11, 30, 2, 15, 30), datetime.datetime(2026, 12, 1, 2, 15, 30)],
        )
        self.assertEqual(
            self.fires("0 0 12 ? * 1", datetime.datetime(2026, 11, 26), 1),
            [datetime.datetime(2026, 11, 29, 12, 0)],
        )

    def test_monthsYearsAndWrap(self):
        self.assertEqual(
            self.fires("0 0 22-1 1 FEB ? 2028", datetime.datetime(2026, 1, 1), 4),
            [
                datetime.datetime(2028, 2, 1, 0, 0),
                datetime.datetime(2028, 2, 1, 1, 0),
                datetime.datetime(2028, 2, 1, 22, 0),
                datetime.datetime(2028, 2, 1, 23, 0),
            ],
        )
        self.assertIsNone(CronExpression("0 0 0 1 1 ? 2027").nextFireTime(datetime.datetime(2027, 6, 1)))
        self.assertEqual(
            CronExpression("0 0 0 31 * ?").nextFireTime(datetime.datetime(2026, 4, 1)),
            datetime.datetime(2026, 5, 31),
        )

    def test_invalid(self):
        for bad in (
            "0 0 6 * *",
            "0 0 6 * * * *",
            "0 0 6 * * MON",
            "0 0 6 ? * ?",
            "60 0 6 * * ?",
            "0 0 6 L * ?",
            "0 0 6 ? * 6#3",
            "0 0 6 15W * ?",
            "0 0 6 * FOO ?",
            "0 0/0 6 * * ?",
            "? 0 6 * * ?",
        ):
            self.assertRaises(InvalidCronExpression, CronExpression, bad)

    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(0, 59),
        st.integers(0, 59),
        st.integers(0, 23),
        st.datetimes(datetime.datetime(2000, 1, 1), datetime.datetime(2090, 1, 1)),
    )
    def test_dailyFiresWithinADay(self, second, minute, hour, start):
        cron = CronExpression("%d %d %d * * ?" % (second, minute, hour))
        fire = cron.nextFireTime(start)
        self.assertGreater(fire, start)
        self.assertLessEqual(fire - start, datetime.timedelta(days=1))
        self.assertEqual((fire.hour, fire.minute, fire.second), (hour, minute, second))


class StoreRetentionTests(SynchronousTestCase):
    def makeFilledStore(self, policy, threadpool=None):
        """
        Four segments of two 30-byte records each, the last one active.
        """
        self.directory = self.mktemp()
        store = makeStore(self.directory, threadpool=threadpool, unflushThreshold=0,
                          maxSegmentSize=60)
        store.deletePolicy = policy
        for i in range(7):
            store.append(i, 0, b"0123456789")
        if threadpool is not None:
            threadpool.runAll()
        self.assertEqual([s.start for s in store.segments], [0, 60, 120, 180])
        now = 1000 * DAY
        for segment, age in zip(store.segments, (10, 5, 1, 100)):
            os.utime(segment.path, (now - age * DAY, now - age * DAY))
        return store, now

    def test_deleteOldSegmentsNeverTheActive(self):
        store, now = self.makeFilledStore(DiscardDeletePolicy(3 * DAY))
        removed = self.successResultOf(store.runDeletePolicy(now))
        self.assertEqual(removed, [0, 60])
        self.assertEqual(sorted(os.listdir(self.directory)),
                         ["00000000000000000120.meta", "00000000000000000180.meta"])
        self.assertEqual(store.minOffset, 120)
        self.assertRaises(OffsetBeforeStart, store.slice, 60, 100)
        self.assertEqual(store.nearestOffset(60), 120)
        # The active segment is the oldest of all, still never touched.
        self.assertEqual(self.successResultOf(store.runDeletePolicy(now + 10 * DAY)), [120])
        self.assertEqual([s.start for s in store.segments], [180])
        self.assertEqual(self.successResultOf(store.append(9, 0, b"x")), 210)

    def test_archive(self):
        store, now = self.makeFilledStore(ArchiveDeletePolicy(3 * DAY))
        with open(store.segments[0].path, "rb") as f:
            first = f.read()
        self.assertEqual(self.successResultOf(store.runDeletePolicy(now)), [0, 60])
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            ["00000000000000000000.meta.arc", "00000000000000000060.meta.arc",
             "00000000000000000120.meta", "00000000000000000180.meta"],
        )
        with open(os.path.join(self.directory, "00000000000000000000.meta.arc"), "rb") as f:
            self.assertEqual(f.read(), first)

    def test_archiveCompressed(self):
        store, now = self.makeFilledStore(ArchiveDeletePolicy(7 * DAY, compress=True))
        with open(store.segments[0].path, "rb") as f:
            first = f.read()
        self.assertEqual(self.successResultOf(store.runDeletePolicy(now)), [0])
        self.assertIn("00000000000000000000.meta.zip", os.listdir(self.directory))
        self.assertNotIn("00000000000000000000.meta", os.listdir(self.directory))
        with zipfile.ZipFile(os.path.join(self.directory, "00000000000000000000.meta.zip")) as z:
            self.assertEqual(z.namelist(), ["00000000000000000000.meta"])
            self.assertEqual(z.read("00000000000000000000.meta"), first)

    def test_offTheReactorThread(self):
        """
        The policy's file work runs in the thread pool; the store goes on
        serving meanwhile and drops segments only when the check is back.
        """
        pool = ManualThreadPool()
        store, now = self.makeFilledStore(DiscardDeletePolicy(3 * DAY), threadpool=pool)
        d = store.runDeletePolicy(now)
        self.assertEqual(len(pool.pending), 1)
        self.assertEqual(store.slice(0, 30).length, 30)
        pool.runOne()
        self.assertEqual(store.minOffset, 120)
        self.assertEqual(len(os.listdir(self.directory)), 4)
        pool.runOne()
        self.assertEqual(self.successResultOf(d), [0, 60])
        self.assertEqual(len(os.listdir(self.directory)), 2)

    def test_noPolicy(self):
        store, now = self.makeFilledStore(None)
        self.assertEqual(self.successResultOf(store.runDeletePolicy(now)), [])
