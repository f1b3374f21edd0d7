"""
Tests for L{metamorphosis.ha.properties}: Java properties syntax.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.ha.properties import PropertiesError, parseProperties, readProperties


class ParsePropertiesTests(SynchronousTestCase):
    def test_separators(self):
        """
        A key ends at C{=}, C{:} or whitespace; whitespace around the
        separator is dropped, trailing whitespace of the value is kept.
        """
        self.assertEqual(
            parseProperties("a=1\nb : 2\nc 3\n  d\t=  4 \ne\n"),
            {"a": "1", "b": "2", "c": "3", "d": "4 ", "e": ""},
        )

    def test_comments(self):
        self.assertEqual(parseProperties("# x=1\n   ! y=2\nz=3\n\n"), {"z": "3"})

    def test_continuation(self):
        """
        An odd number of trailing backslashes continues the line; the next
        line's leading whitespace is dropped; an even number is an escaped
        backslash.
        """
        self.assertEqual(
            parseProperties("a=one, \\\n    two\nb=x\\\\\nc=\\\n"),
            {"a": "one, two", "b": "x\\", "c": ""},
        )

    def test_lineEndings(self):
        self.assertEqual(parseProperties("a=1\r\nb=2\rc=3"), {"a": "1", "b": "2", "c": "3"})

    def test_escapes(self):
        self.assertEqual(
            parseProperties("k\\=ey=\\u0041\\t\\q\nx\\ y=1"),
            {"k=ey": "A\tq", "x y": "1"},
        )

    def test_lastWins(self):
        self.assertEqual(parseProperties("a=1\na=2"), {"a": "2"})

    def test_badUnicodeEscape(self):
        error = self.assertRaises(PropertiesError, parseProperties, "\n a=\\u12", "f.properties")
        self.assertIn("f.properties, line 2", str(error))

    def test_gbkFile(self):
        """
        Files are decoded as GBK, as the Java wrapper reads them.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write("# 同步\nslave=127.0.0.1:8132\nnote=主\n".encode("gbk"))
        self.assertEqual(readProperties(path), {"slave": "127.0.0.1:8132", "note": "主"})

    def test_missingFile(self):
        path = self.mktemp()
        error = self.assertRaises(PropertiesError, readProperties, path)
        self.assertIn(path, str(error))

    # A loaded CI machine makes generation slow, which is not a failure.
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
            max_size=5,
        )
    )
    def test_roundTrip(self, properties):
        """
        Whatever Java's C{Properties.store} escaping writes is read back
        unchanged.
        """

        def escape(text, isKey):
            out = []
            for i, char in enumerate(text):
                if char in "\\=:#!" or (char == " " and (isKey or i == 0)):
                    out.append("\\" + char)
                elif char in "\t\n\r\f":
                    out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
                elif ord(char) < 0x20 or ord(char) > 0x7E:
                    out.extend("\\u%04x" % (unit,) for unit in _utf16(char))
                else:
                    out.append(char)
            return "".join(out)

        text = "".join("%s=%s\n" % (escape(k, True), escape(v, False)) for k, v in properties.items())
        self.assertEqual(parseProperties(text), properties)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(max_size=60))
    def test_anyTextParses(self, text):
        """
        Any text either parses to a dict of strings or is rejected with
        L{PropertiesError}.
        """
        try:
            result = parseProperties(text)
        except PropertiesError:
            return
        self.assertTrue(all(isinstance(k, str) and isinstance(v, str) for k, v in result.items()))


def _utf16(char):
    data = char.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
