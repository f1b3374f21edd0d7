"""
Java C{.properties} files, read the way C{java.util.Properties.load} reads
them.

MetaQ's replication plugins are configured by such files
(C{samsa_master.properties}, C{gregor_slave.properties},
C{async_slave.properties}; docs/ha.md), which the Java broker reads
as GBK.  Operators copy these files from Java deployments, so the whole syntax
is honoured: C{#} and C{!} comments, C{=}, C{:} or whitespace between key and
value, backslash line continuations and escapes, C{\\uXXXX}.
"""

import re

#: The encoding the Java wrapper reads plugin files in (C{StartupHelp}).
ENCODING = "gbk"

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PropertiesError(ValueError):
    """
    A properties file could not be read; the message names the file and,
    where there is one, the line.
    """


def _unescape(text, where):
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        i += 1
        if i == len(text):
            break
        char = text[i]
        if char == "u":
            digits = text[i + 1 : i + 5]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                raise PropertiesError("%s: malformed \\uxxxx encoding" % (where,))
            out.append(chr(int(digits, 16)))
            i += 5
            continue
        out.append(_ESCAPES.get(char, char))
        i += 1
    # \u escapes are UTF-16 code units: join surrogate pairs as Java does.
    return "".join(out).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _isContinued(line):
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _logicalLines(text):
    """
    Join natural lines continued by an odd number of trailing backslashes,
    dropping the leading whitespace of each continuation, and yield
    C{(first line number, logical line)} for the non-comment, non-blank ones.
    """
    natural = _LINE_BREAK.split(text)
    index = 0
    while index < len(natural):
        number = index + 1
        line = natural[index].lstrip(" \t\f")
        index += 1
        if not line or line[0] in "#!":
            continue
        while _isContinued(line):
            line = line[:-1]
            if index == len(natural):
                break
            line += natural[index].lstrip(" \t\f")
            index += 1
        yield number, line


def _splitKeyValue(line):
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            i += 2
            continue
        if char in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:]
    rest = rest.lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def parseProperties(text, source="<string>"):
    """
    Parse the text of a properties file.

    @param source: the name used in error messages.
    @return: a L{dict} of key to value (later keys override earlier ones, as
        in Java).
    @raise PropertiesError: on a malformed C{\\u} escape.
    """
    properties = {}
    for number, line in _logicalLines(text):
        where = "%s, line %d" % (source, number)
        key, value = _splitKeyValue(line)
        properties[_unescape(key, where)] = _unescape(value, where)
    return properties


def readProperties(path):
    """
    Read a properties file from disk, decoding it as GBK as the Java wrapper
    does.

    @raise PropertiesError: if the file cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PropertiesError("%s: %s" % (path, e.strerror or e)) from e
    try:
        text = data.decode(ENCODING)
    except UnicodeDecodeError as e:
        raise PropertiesError("%s: not valid %s text at byte %d" % (path, ENCODING, e.start)) from e
    return parseProperties(text, path)
