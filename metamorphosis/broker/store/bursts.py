"""
Bursts of work on the reactor thread that are finished together: the puts
of one socket read are written with one write per partition
(L{batchedWrites}), and the replies to every put one fsync covers leave in
one send per connection (L{acknowledging}).
"""


class _Burst:
    """
    A context that may be entered again inside itself: what is given to
    L{later} while it is entered runs once the outermost exit is over, on
    the same reactor turn.  Reactor thread only.
    """

    def __init__(self):
        self.depth = 0
        self._later = []

    def __enter__(self):
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if not self.depth and self._later:
            later, self._later = self._later, []
            for call in later:
                call()
        return False

    def later(self, call):
        """
        Call C{call} when the outermost burst is over.
        """
        self._later.append(call)


#: Entered by the broker around each socket read: appends made meanwhile
#: are queued and written when it is left, one write per partition for all
#: of them, so the puts of one read cost one C{pwrite} (and one job)
#: instead of one each.
batchedWrites = _Burst()

#: Entered by a store while it fires the Deferreds of a burst of puts
#: (those of one write, or every put one fsync covers): the broker holds
#: the replies of the burst and sends them once it is over, one write per
#: connection, with no timer and no extra turn of the reactor between the
#: fsync and the reply.
acknowledging = _Burst()
