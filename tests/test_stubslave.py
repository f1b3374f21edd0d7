"""
The framing of C{benchmarks/stubslave.py}, the stand-in slave of
C{benchmarks/ha.py --slave-stub}: it must answer each whole request once,
and keep what is incomplete for the next read, or the bound it gives is
wrong.
"""

import importlib.util
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.commands import SyncCommand, VersionCommand

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "stubslave.py"
_spec = importlib.util.spec_from_file_location("stubslave", _PATH)
stubslave = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stubslave)

_opaques = st.integers(-(2**31), 2**31 - 1)
_syncs = st.builds(
    SyncCommand,
    topic=st.sampled_from(["bench", "meta-test"]),
    partition=st.integers(0, 5),
    data=st.binary(max_size=64),
    flag=st.integers(0, 7),
    msgId=st.integers(0, 2**62),
    checksum=st.integers(-(2**31), 2**31 - 1),
    opaque=_opaques,
)
_requests = st.lists(st.one_of(_syncs, st.builds(VersionCommand, opaque=_opaques)), max_size=8)


class RequestsTests(SynchronousTestCase):
    @given(_requests, st.data())
    def test_wholeRequestsOnly(self, commands, data):
        """
        Of a stream of requests cut anywhere, C{requests} gives the opaques
        of the whole requests before the cut, and how many bytes they take.
        """
        frames = [command.encode() for command in commands]
        stream = b"".join(frames)
        cut = data.draw(st.integers(0, len(stream)))
        whole, ends = [], 0
        for command, frame in zip(commands, frames):
            if ends + len(frame) > cut:
                break
            ends += len(frame)
            whole.append(b"%d" % (command.opaque,))
        self.assertEqual(stubslave.requests(stream[:cut]), (whole, ends))
