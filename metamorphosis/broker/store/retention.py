"""
Retention policies for old segment files (Java C{DeletePolicyFactory},
C{DiscardDeletePolicy}, C{ArchiveDeletePolicy}; docs/storage.md).

A policy is written C{name,age[,arg]}: C{delete,168} drops segments older
than 168 hours, C{archive,30m,true} zips segments older than 30 minutes.
"""

import os
import re
import zipfile

from zope.interface import implementer

from metamorphosis.broker.store.interfaces import IDeletePolicy

_age = re.compile(r"^\s*(\d+)\s*([hms]?)\s*$")
_UNITS = {"": 3600, "h": 3600, "m": 60, "s": 1}


class InvalidDeletePolicy(ValueError):
    """
    A C{deletePolicy} value that names no known policy or has a bad age.
    """


def parseAge(text):
    """
    An age in seconds from C{N}, C{Nh} (hours), C{Nm} (minutes) or C{Ns}.
    """
    match = _age.match(text)
    if match is None:
        raise InvalidDeletePolicy("Invalid age %r: expected N, Nh, Nm or Ns" % (text,))
    return int(match.group(1)) * _UNITS[match.group(2)]


class _AgePolicy:
    def __init__(self, maxAge):
        self.maxAge = maxAge

    def canDelete(self, path, now):
        return now - os.stat(path).st_mtime > self.maxAge


@implementer(IDeletePolicy)
class DiscardDeletePolicy(_AgePolicy):
    """
    Delete segment files older than C{maxAge} seconds.
    """

    name = "delete"

    def process(self, path):
        os.remove(path)

    def __repr__(self):
        return "DiscardDeletePolicy(maxAge=%d)" % (self.maxAge,)


@implementer(IDeletePolicy)
class ArchiveDeletePolicy(_AgePolicy):
    """
    Keep segment files older than C{maxAge} seconds out of the log: renamed
    to C{.meta.arc}, or with C{compress} zipped into C{.meta.zip} (one
    entry named like the segment file) and the original removed.
    """

    name = "archive"

    def __init__(self, maxAge, compress=False):
        _AgePolicy.__init__(self, maxAge)
        self.compress = compress

    def process(self, path):
        if not self.compress:
            os.rename(path, path + ".arc")
            return
        partial = path + ".zip.part"
        with zipfile.ZipFile(
            partial, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False
        ) as archive:
            archive.write(path, os.path.basename(path))
        os.rename(partial, path + ".zip")
        os.remove(path)

    def __repr__(self):
        return "ArchiveDeletePolicy(maxAge=%d, compress=%r)" % (self.maxAge, self.compress)


def parseDeletePolicy(text):
    """
    The L{IDeletePolicy} a C{deletePolicy} value names.

    @raise InvalidDeletePolicy: unknown name or bad arguments.
    """
    parts = [part.strip() for part in text.split(",")]
    name = parts[0]
    if name == "delete" and len(parts) == 2:
        return DiscardDeletePolicy(parseAge(parts[1]))
    if name == "archive" and len(parts) in (2, 3):
        compress = len(parts) == 3 and parts[2].lower() == "true"
        return ArchiveDeletePolicy(parseAge(parts[1]), compress)
    if name in ("delete", "archive"):
        raise InvalidDeletePolicy("Wrong number of arguments in deletePolicy %r" % (text,))
    raise InvalidDeletePolicy("Unknown delete policy %r in %r" % (name, text))
