"""
Tests for L{metamorphosis.protocol.topics}.
"""

import re
import string

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol import topics
from metamorphosis.protocol.topics import (
    IllegalTopicName,
    checkTopic,
    checkTopicPattern,
    isLegalTopic,
    topicPattern,
)

LEGAL_CHARACTERS = string.ascii_letters + string.digits + "._-"


class TopicNameTests(SynchronousTestCase):
    def test_realNames(self):
        """
        The names MetaQ deployments use are legal.
        """
        for name in ("meta-test", "com.example.orders", "a", "T_1", "x" * 249, "..."):
            self.assertEqual(checkTopic(name), name)

    def test_illegal(self):
        """
        Names that are paths, aliases, empty, too long or hold characters a
        file system or ZooKeeper treats specially are refused with a reason.
        """
        for name in ("", ".", "..", "../x", "./victim", "../data/victim", "/tmp/abs",
                     "a/b", "a\x00b", "x" * 250, "a b", "tópico", "a*", "a\\b", None, b"ab"):
            with self.assertRaises(IllegalTopicName) as caught:
                checkTopic(name)
            self.assertIn("Illegal topic name", str(caught.exception))
            self.assertFalse(isLegalTopic(name))

    def test_maxLength(self):
        self.assertTrue(isLegalTopic("abcd", maxLength=4))
        self.assertFalse(isLegalTopic("abcde", maxLength=4))

    def test_rememberedWithTheirLimit(self):
        """
        A name found legal is remembered with the limit it was checked
        against: a shorter limit still refuses it, and the names kept are
        bounded.
        """
        self.assertEqual(checkTopic("remembered-name"), "remembered-name")
        self.assertRaises(IllegalTopicName, checkTopic, "remembered-name", 5)
        self.assertFalse(isLegalTopic("remembered-name", maxLength=5))
        for number in range(topics._LEGAL_NAMES_KEPT + 10):
            checkTopic(f"t{number}")
        self.assertLessEqual(len(topics._legalNames), topics._LEGAL_NAMES_KEPT)
        self.assertTrue(isLegalTopic("remembered-name"))

    @given(st.text(alphabet=LEGAL_CHARACTERS, min_size=1, max_size=249))
    def test_legalAlphabet(self, name):
        self.assertEqual(isLegalTopic(name), name not in (".", ".."))

    @given(st.text(max_size=300))
    def test_anyText(self, name):
        """
        A name is legal exactly when it is 1..249 characters of the legal
        set and not C{.} or C{..}; a legal name never leaves its directory.
        """
        expected = (bool(re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name))
                    and name not in (".", ".."))
        self.assertEqual(isLegalTopic(name), expected)
        # The second answer comes from the names remembered as legal.
        self.assertEqual(isLegalTopic(name), expected)
        self.assertEqual(isLegalTopic(name, maxLength=3), expected and len(name) <= 3)
        if expected:
            self.assertNotIn("/", name)
            self.assertNotIn("\x00", name)

    def test_patterns(self):
        """
        A section name may hold C{*}, which matches only legal characters.
        """
        self.assertEqual(checkTopicPattern("app*"), "app*")
        self.assertRaises(IllegalTopicName, checkTopicPattern, "app/*")
        self.assertRaises(IllegalTopicName, checkTopicPattern, "..")
        pattern = topicPattern("app*")
        self.assertTrue(pattern.fullmatch("app.orders-1"))
        self.assertFalse(pattern.fullmatch("app/../../esc"))
        self.assertFalse(pattern.fullmatch("app\x00"))

    @given(st.text(max_size=40))
    def test_patternMatchesOnlyLegal(self, suffix):
        if topicPattern("app*").fullmatch("app" + suffix):
            self.assertTrue(isLegalTopic("app" + suffix))
