"""
Tests for L{metamorphosis.protocol.xa}.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.xa import XAER_RMERR, XAException


class XAExceptionTests(SynchronousTestCase):
    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(-(2**31), 2**31 - 1), st.one_of(st.none(), st.text()))
    def test_roundTrip(self, code, message):
        """
        The client reads back the code and message of the broker's reply.
        """
        if message == "null":
            message = None
        parsed = XAException.fromReply(XAException(code, message).reply())
        self.assertEqual((parsed.code, parsed.message), (code, message))

    def test_javaText(self):
        self.assertEqual(
            XAException(-4, "XA transaction 'x' has not been started.").reply(),
            "XAException:code=-4,msg=XA transaction 'x' has not been started.",
        )
        self.assertEqual(XAException(0).reply(), "XAException:code=0,msg=null")

    def test_otherText(self):
        """
        A reply that is not an XAException text becomes XAER_RMERR.
        """
        error = XAException.fromReply("Local transaction 'TX:s:1' has not been started.")
        self.assertEqual(error.code, XAER_RMERR)
