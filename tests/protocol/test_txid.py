"""
Tests for L{metamorphosis.protocol.txid} and L{metamorphosis.protocol.javalang}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol import txid
from metamorphosis.protocol.javalang import isJavaBlank, isJavaDigit, parseJavaInt
from metamorphosis.protocol.txid import (
    NULL_TRANSACTION_ID,
    LocalTransactionId,
    XATransactionId,
    canonicalKey,
    parseTransactionId,
)
from tests.protocol import strategies


class TransactionIdTests(SynchronousTestCase):
    def test_local(self):
        transactionId = parseTransactionId("TX:10.0.0.1-1357000000000-1:1")
        self.assertEqual(transactionId, LocalTransactionId("10.0.0.1-1357000000000-1", 1))
        self.assertEqual(transactionId.key, "TX:10.0.0.1-1357000000000-1:1")

    def test_xa(self):
        transactionId = parseTransactionId("XID:1:0102ff:0a0b:XAMessageProducer-host1")
        self.assertEqual(
            transactionId,
            XATransactionId(1, b"\x01\x02\xff", b"\x0a\x0b", "XAMessageProducer-host1"),
        )
        self.assertEqual(transactionId.key, "XID:1:0102ff:0a0b:XAMessageProducer-host1")

    def test_null(self):
        self.assertIs(parseTransactionId("null"), NULL_TRANSACTION_ID)
        self.assertEqual(NULL_TRANSACTION_ID.key, "null")

    def test_javaQuirks(self):
        """
        Keys Java accepts in unusual spellings, and their canonical form.
        """
        for key, canonical in [
            ("TX:s:1:", "TX:s:1"),  # trailing empty part dropped
            ("TX:s:1::", "TX:s:1"),
            ("TX::1", "TX::1"),
            ("TX:s:+007", "TX:s:7"),
            ("TX:s:-2147483648", "TX:s:-2147483648"),
            ("XID:1:ABcd:EF:q", "XID:1:abcd:ef:q"),  # either case
            ("XID:1:abc:f:q", "XID:1:ab::q"),  # odd trailing digit ignored
            ("XID:1:::", "XID:1:::"),  # empty parts kept
            ("XID:1:+f-1:00:q", "XID:1:0fff:00:q"),  # Integer.parseInt(pair, 16)
            ("XID:-5:00:00:a b", "XID:-5:00:00:a b"),
        ]:
            self.assertEqual(parseTransactionId(key).key, canonical, key)

    def test_illegal(self):
        for key in [
            "", "NULL", "tx:s:1", "TX:s", "TX:s:", "TX:a:b:1", "TX:s:x",
            "TX:s:2147483648", "TX:s:1.0", "XID:1:00:00", "XID:1:00:00:q:r",
            "XID:x:00:00:q", "XID:1:0g:00:q", "XID:1:00:zz:q", "XA:1:00:00:q",
        ]:
            error = self.assertRaises(ValueError, parseTransactionId, key)
            self.assertEqual(str(error), f"Illegal transaction key:{key}")
            # Refused again: an error is not remembered as a result.
            error = self.assertRaises(ValueError, canonicalKey, key)
            self.assertEqual(str(error), f"Illegal transaction key:{key}")

    def test_remembered(self):
        """
        A key of up to 512 characters is parsed once while it is among the
        last 1024 seen: the same id object comes back.  A longer one is
        parsed every time (a client could otherwise make the broker hold
        megabytes of keys), with the same result.
        """
        key = "TX:remembered-%d:1" % id(self)
        self.assertIs(parseTransactionId(key), parseTransactionId(key))
        self.assertEqual(canonicalKey("TX:%s:+01" % key[3:-2]), key)
        long = "TX:" + "s" * 600 + ":+1"
        self.assertIsNot(parseTransactionId(long), parseTransactionId(long))
        self.assertEqual(parseTransactionId(long), LocalTransactionId("s" * 600, 1))
        self.assertEqual(canonicalKey(long), "TX:" + "s" * 600 + ":1")
        txid._parseRemembered.cache_clear()
        for n in range(3000):
            parseTransactionId("TX:s:%d" % n)
        self.assertEqual(txid._parseRemembered.cache_info().currsize, 1024)

    @settings(max_examples=200, deadline=None)
    @given(strategies.transactionIds)
    def test_roundTrip(self, transactionId):
        self.assertEqual(parseTransactionId(transactionId.key), transactionId)
        self.assertEqual(canonicalKey(transactionId.key), transactionId.key)


class JavaLangTests(SynchronousTestCase):
    def test_parseInt(self):
        self.assertEqual(parseJavaInt("2147483647"), 2**31 - 1)
        self.assertEqual(parseJavaInt("-2147483648"), -(2**31))
        self.assertEqual(parseJavaInt("+0"), 0)
        self.assertEqual(parseJavaInt("\uff11\u0662"), 12)  # full-width 1, Arabic-Indic 2
        self.assertEqual(parseJavaInt("9223372036854775807", bits=64), 2**63 - 1)
        self.assertEqual(parseJavaInt("-Ff", radix=16), -255)
        self.assertEqual(parseJavaInt("\uff21", radix=16), 10)  # full-width A
        for text in [
            "", "+", "-", " 1", "1 ", "1_0", "0x1", "1.0", "2147483648",
            "-2147483649", "\U0001d7ce", "g", "٣x", "0" * 5000 + "x",
        ]:
            self.assertRaises(ValueError, parseJavaInt, text)
        self.assertRaises(ValueError, parseJavaInt, "9223372036854775808", bits=64)
        self.assertRaises(ValueError, parseJavaInt, "g", radix=16)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(-(2**63), 2**63 - 1))
    def test_parseLongRoundTrip(self, value):
        self.assertEqual(parseJavaInt(str(value), bits=64), value)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet="0123456789", min_size=1, max_size=21))
    def test_parseIntAsciiDigits(self, text):
        """
        Plain ASCII digits, leading zeros and the 18/19-digit boundary of
        the short path included: the value, or an error out of range.
        """
        for bits in (32, 64):
            if int(text) <= 2 ** (bits - 1) - 1:
                self.assertEqual(parseJavaInt(text, bits=bits), int(text))
            else:
                self.assertRaises(ValueError, parseJavaInt, text, bits=bits)

    def test_isJavaDigit(self):
        self.assertTrue(isJavaDigit("7"))
        self.assertTrue(isJavaDigit("\u0663"))
        self.assertFalse(isJavaDigit("\U0001d7ce"))  # outside one Java char
        self.assertFalse(isJavaDigit("-"))

    def test_isJavaBlank(self):
        for text in [None, "", " ", "\t\r\n\x0b\x0c", "\x1c\u2028\u3000"]:
            self.assertTrue(isJavaBlank(text), repr(text))
        for text in ["a", "\xa0", "\u2007", "\u202f", "\x85", " a "]:
            self.assertFalse(isJavaBlank(text), repr(text))
