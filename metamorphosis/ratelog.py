"""
Logging of expected failures at a bounded rate.

A hostile or broken client can make the broker refuse thousands of requests
a second (an illegal topic name, a full disk, a limit reached). Each refusal
is answered to the client; the log only needs to tell the operator that it
happens, how often and one example, not one line (let alone a traceback) per
request. L{RateLimitedLog} writes the first event of a kind at once and then
at most one line per interval for that kind, carrying the number of events
of the interval that were not written::

    refusals = RateLimitedLog(Logger(), interval=60)
    refusals.warn("illegal-topic", "Refused a put to {topic!r}: {reason}",
                  topic=topic, reason=reason)

The count of the events suppressed since the last written line is the
C{suppressed} field, and is appended to the text when it is not zero. The
line of an interval is written when the next event of its kind arrives after
the interval, so no timer is left behind; the last burst before a quiet
period is reported with the next event.
"""

from twisted.logger import LogLevel

__all__ = ["RateLimitedLog", "DEFAULT_INTERVAL"]

#: Seconds between two lines of the same kind.
DEFAULT_INTERVAL = 60.0

#: Kinds remembered at once; beyond that the kinds whose interval is over
#: are forgotten (their suppressed count is written first), then the oldest.
MAX_KINDS = 1024


class _Kind:
    __slots__ = ("lastWritten", "suppressed")

    def __init__(self, now):
        self.lastWritten = now
        self.suppressed = 0


class RateLimitedLog:
    """
    Write events of each kind at most once per C{interval} seconds, with
    the count of those not written.

    @param log: the L{twisted.logger.Logger} to write to.
    @param interval: seconds between two lines of one kind.
    @param clock: an L{twisted.internet.interfaces.IReactorTime}; the
        global reactor by default.
    """

    def __init__(self, log, interval=DEFAULT_INTERVAL, clock=None):
        self.log = log
        self.interval = interval
        self.clock = clock
        self._kinds = {}

    def emit(self, level, kind, format, **fields):
        """
        Record one event of C{kind}; write it with C{format} and C{fields}
        if no line of this kind was written in the last interval.

        @return: whether a line was written.
        """
        if self.clock is None:
            # Resolved late, so that a module-level instance does not
            # install the default reactor at import.
            from twisted.internet import reactor

            self.clock = reactor
        now = self.clock.seconds()
        state = self._kinds.get(kind)
        if state is not None and now - state.lastWritten < self.interval:
            state.suppressed += 1
            return False
        suppressed = 0 if state is None else state.suppressed
        if state is None:
            self._remember(kind, now)
        else:
            state.lastWritten = now
            state.suppressed = 0
        if suppressed:
            format += " ({suppressed} more like this in the last {interval:g} s)"
        self.log.emit(level, format, kind=kind, suppressed=suppressed,
                      interval=self.interval, **fields)
        return True

    def _remember(self, kind, now):
        if len(self._kinds) >= MAX_KINDS:
            for old, state in list(self._kinds.items()):
                if now - state.lastWritten >= self.interval:
                    self._forget(old, state)
            while len(self._kinds) >= MAX_KINDS:
                old = next(iter(self._kinds))
                self._forget(old, self._kinds[old])
        self._kinds[kind] = _Kind(now)

    def _forget(self, kind, state):
        del self._kinds[kind]
        if state.suppressed:
            self.log.emit(LogLevel.warn,
                          "{suppressed} more events of kind {kind!r} were not logged",
                          kind=kind, suppressed=state.suppressed)

    def info(self, kind, format, **fields):
        return self.emit(LogLevel.info, kind, format, **fields)

    def warn(self, kind, format, **fields):
        return self.emit(LogLevel.warn, kind, format, **fields)

    def error(self, kind, format, **fields):
        return self.emit(LogLevel.error, kind, format, **fields)
