"""
Tests for L{metamorphosis.ratelog}.
"""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis import ratelog
from metamorphosis.ratelog import RateLimitedLog


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        self.clock = Clock()
        self.log = RateLimitedLog(Logger(observer=self.events.append), interval=10,
                                  clock=self.clock)

    def lines(self):
        return [formatEvent(event) for event in self.events]

    def test_firstEventWritten(self):
        """
        The first event of a kind is written at once, with its fields.
        """
        self.assertTrue(self.log.warn("bad-name", "Refused {topic}", topic="a/b"))
        self.assertEqual(self.lines(), ["Refused a/b"])
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.events[0]["suppressed"], 0)

    def test_oneLinePerInterval(self):
        """
        Within an interval further events of the kind are only counted; the
        first one after the interval is written with that count.
        """
        for i in range(1000):
            self.log.warn("bad-name", "Refused {topic}", topic=i)
            self.clock.advance(0.005)
        self.assertEqual(self.lines(), ["Refused 0"])
        self.clock.advance(5.1)
        self.log.error("bad-name", "Refused {topic}", topic="late")
        self.assertEqual(
            self.lines(), ["Refused 0", "Refused late (999 more like this in the last 10 s)"]
        )
        self.assertEqual(self.events[1]["suppressed"], 999)
        self.assertEqual(self.events[1]["log_level"], LogLevel.error)
        self.clock.advance(10)
        self.log.warn("bad-name", "Refused {topic}", topic="quiet")
        self.assertEqual(self.lines()[-1], "Refused quiet")

    def test_kindsIndependent(self):
        """
        Each kind has its own interval.
        """
        self.log.warn("bad-name", "name")
        self.log.warn("disk-full", "disk")
        self.log.warn("bad-name", "name")
        self.assertEqual(self.lines(), ["name", "disk"])

    def test_kindsBounded(self):
        """
        Only L{ratelog.MAX_KINDS} kinds are remembered; a forgotten kind's
        unwritten count is written when it is forgotten.
        """
        self.patch(ratelog, "MAX_KINDS", 3)
        for kind in "abc":
            self.log.warn(kind, kind)
        self.log.warn("a", "a")
        self.log.warn("d", "d")
        self.assertEqual(len(self.log._kinds), 3)
        self.assertEqual(
            self.lines(), ["a", "b", "c", "1 more events of kind 'a' were not logged", "d"]
        )
