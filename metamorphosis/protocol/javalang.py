"""
The C{java.lang} (and commons-lang) rules that decide what a MetaQ peer
accepts: number parsing, digits, blankness.

Python's C{int()} is more lenient than C{Integer.parseInt} (it takes
surrounding whitespace and underscores) and has no range, so the codec uses
these instead: an optional C{+} or C{-}, then one or more digits as
C{Character.digit} sees them (any Unicode decimal digit of the Basic
Multilingual Plane, ASCII and full-width letters above 9), range-checked to
32 or 64 bits like C{NumberFormatException}.
"""

import unicodedata

__all__ = ["parseJavaInt", "isJavaDigit", "isJavaBlank"]

_RANGES = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


def isJavaDigit(character: str) -> bool:
    """
    C{Character.isDigit(char)}: a decimal digit that fits in one Java char.
    """
    return character.isdecimal() and ord(character) <= 0xFFFF


def _isJavaWhitespace(character: str) -> bool:
    """
    C{Character.isWhitespace(char)}: Unicode separators except the
    non-breaking ones, and the ASCII controls tab to carriage return and
    file to unit separator.
    """
    if character in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f":
        return True
    return character not in "\xa0\u2007\u202f" and unicodedata.category(
        character
    ) in ("Zs", "Zl", "Zp")


def isJavaBlank(text: str | None) -> bool:
    """
    commons-lang C{StringUtils.isBlank}: L{None}, empty or all whitespace.
    """
    return text is None or all(_isJavaWhitespace(character) for character in text)


def _javaDigit(character: str, radix: int) -> int | None:
    """
    C{Character.digit(char, radix)}, or L{None} where Java gives -1.
    """
    point = ord(character)
    if point > 0xFFFF:
        return None
    value = unicodedata.decimal(character, None)
    if value is None:
        for first in (0x41, 0x61, 0xFF21, 0xFF41):
            if first <= point < first + 26:
                value = point - first + 10
                break
        else:
            return None
    return value if value < radix else None


def parseJavaInt(text: str, radix: int = 10, bits: int = 32) -> int:
    """
    C{Integer.parseInt(text, radix)} (C{bits=32}) or C{Long.parseLong}
    (C{bits=64}).

    @raise ValueError: where Java throws C{NumberFormatException}.
    """
    low, high = _RANGES[bits]
    if radix == 10 and 0 < len(text) < 19 and text.isascii() and text.isdigit():
        # Plain ASCII digits (every field of a put but a negative one):
        # Python's int() agrees, and fewer than 19 digits fit a long.
        value = int(text)
        if value <= high:
            return value
        raise ValueError(f'For input string: "{text}"')
    digits = text[1:] if text[:1] in ("-", "+") else text
    if radix == 10 and digits.isdigit() and digits.isascii():
        # The common case: Python's int() agrees on plain ASCII digits.
        try:
            value = int(text)
        except ValueError:  # beyond Python's int-from-string digit limit
            value = None
    elif digits:
        value = 0
        for character in digits:
            digit = _javaDigit(character, radix)
            if digit is None:
                value = None
                break
            value = value * radix + digit
        else:
            if text[0] == "-":
                value = -value
    else:
        value = None
    if value is not None and low <= value <= high:
        return value
    raise ValueError(f'For input string: "{text}"')
