"""
The names a topic may have.

A topic name becomes a directory name (C{<dataPath>/<topic>-<partition>})
and a ZooKeeper node name, so it must not be able to name anything else: no
C{/}, no C{..}, no NUL, nothing a file system or ZooKeeper treats specially.
The legal set is Kafka's: ASCII letters, digits, C{.}, C{_} and C{-}, 1 to
249 characters (the longest name whose partition directory still fits the
255-byte limit of a file name), and neither C{.} nor C{..}. The names real
MetaQ deployments use (C{meta-test}, C{com.example.orders}) are all legal.

Every place a topic enters checks it here: the broker before any store or
file exists, the configuration for its C{[topic=…]} sections, the store as
a last line of defence, and the client before anything is sent.
"""

import re

__all__ = [
    "DEFAULT_MAX_TOPIC_LENGTH",
    "IllegalTopicName",
    "checkTopic",
    "checkTopicPattern",
    "isLegalTopic",
    "topicPattern",
]

#: The longest topic name accepted by default (Kafka's limit).
DEFAULT_MAX_TOPIC_LENGTH = 249

_LEGAL = re.compile(r"[A-Za-z0-9._-]+")
_LEGAL_PATTERN = re.compile(r"[A-Za-z0-9._*-]+")


class IllegalTopicName(ValueError):
    """
    A topic name outside the legal set; the message says why.
    """

    def __init__(self, topic, reason):
        ValueError.__init__(self, f"Illegal topic name {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


#: Names found legal, with the limit they were checked against: a broker
#: checks the same few names on every request (twice for a put), so a set
#: lookup answers instead of the checks.  Forgotten all at once when full.
_legalNames = set()
_LEGAL_NAMES_KEPT = 4096


def _legalProblem(topic, maxLength):
    """
    L{_problem} against the legal set, remembering the names that pass.
    """
    if type(topic) is str and (topic, maxLength) in _legalNames:
        return None
    problem = _problem(topic, maxLength, _LEGAL)
    if problem is None:
        if len(_legalNames) >= _LEGAL_NAMES_KEPT:
            _legalNames.clear()
        _legalNames.add((topic, maxLength))
    return problem


def _problem(topic, maxLength, pattern):
    if not isinstance(topic, str):
        return "a topic name is a string"
    if not topic:
        return "a topic name cannot be empty"
    if len(topic) > maxLength:
        return f"longer than {maxLength} characters"
    if topic in (".", ".."):
        return "'.' and '..' are not topic names"
    if not pattern.fullmatch(topic):
        return "only ASCII letters, digits, '.', '_' and '-' are allowed"
    return None


def checkTopic(topic, maxLength=DEFAULT_MAX_TOPIC_LENGTH):
    """
    Return C{topic} if it is a legal topic name.

    @raise IllegalTopicName: it is not.
    """
    problem = _legalProblem(topic, maxLength)
    if problem is not None:
        raise IllegalTopicName(topic, problem)
    return topic


def isLegalTopic(topic, maxLength=DEFAULT_MAX_TOPIC_LENGTH):
    """
    Whether C{topic} is a legal topic name.
    """
    return _legalProblem(topic, maxLength) is None


def checkTopicPattern(pattern, maxLength=DEFAULT_MAX_TOPIC_LENGTH):
    """
    Return C{pattern}, the name of a C{[topic=…]} section, if it is a legal
    topic name in which C{*} may stand for any legal characters.

    @raise IllegalTopicName: it is not.
    """
    problem = _problem(pattern, maxLength, _LEGAL_PATTERN)
    if problem is not None:
        raise IllegalTopicName(pattern, problem)
    return pattern


def topicPattern(pattern):
    """
    The regular expression of a section name with C{*}: each C{*} matches
    any run of legal characters (never C{/}), so a wildcard section only
    ever matches legal names.
    """
    return re.compile("[A-Za-z0-9._-]*".join(re.escape(part) for part in pattern.split("*")))
