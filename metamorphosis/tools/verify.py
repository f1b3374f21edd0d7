"""
C{metaq verify}: check a partition's files.  It reads the files directly:
run it on the broker's host; a running broker only appends to them.

    metaq verify /var/lib/metaq/data/orders-0
    metaq verify /var/lib/metaq/data

A directory holding segment files is one partition; any other directory
is a data directory: each of its subdirectories holding segment files is
checked.  Every record of every segment is read and its length and
checksum checked (L{metamorphosis.tools.dump.SegmentReader}), and the
segments must follow each other (each starts where the previous one
ends).  For each partition it prints the segments and records checked and
every problem: a bad record (where it is; the rest of that segment is not
checked), a segment that cannot be read, a gap or an overlap between
segments.  An incomplete last record (a write cut short, which the broker
cuts at its next start) is reported but is no damage.  Exit status 1 when
a partition is damaged.
"""

import os
import sys

from twisted.internet import threads
from twisted.python import usage

from metamorphosis.broker.store.segment import offsetFromName
from metamorphosis.tools.cli import ToolError, Verbosity
from metamorphosis.tools.dump import SegmentReader, segmentFiles


class Options(Verbosity, usage.Options):
    synopsis = "PARTITION_OR_DATA_DIRECTORY..."
    longdesc = "Check the segment files of partitions."

    def parseArgs(self, *paths):
        if not paths:
            raise usage.UsageError("give partition or data directories")
        self["paths"] = paths


def _hasSegments(directory):
    return any(offsetFromName(name) is not None for name in os.listdir(directory))


def partitionDirectories(path):
    """
    The partition directories of C{path}, sorted.

    @raise ToolError: C{path} is not a directory or holds no partition.
    """
    if not os.path.isdir(path):
        raise ToolError("%s: not a directory" % (path,))
    if _hasSegments(path):
        return [path]
    found = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if os.path.isdir(os.path.join(path, name))
                   and _hasSegments(os.path.join(path, name)))
    if not found:
        raise ToolError("%s: no segment files, and no partition directory in it" % (path,))
    return found


def checkPartition(directory):
    """
    Check the segments of one partition directory (blocking: call it in a
    thread).

    @return: C{(segments, records, damage, notes)}: the lists of texts of
        what is damaged and of what is worth saying but is no damage.
    """
    damage, notes, records = [], [], 0
    previousEnd = None
    paths = segmentFiles(directory)
    for path in paths:
        name = os.path.basename(path)
        reader = SegmentReader(path)
        try:
            for _ in reader.records():
                records += 1
        except OSError as e:
            damage.append("%s: cannot be read: %s" % (name, e.strerror or e))
            previousEnd = None
            continue
        if reader.problem is not None:
            offset, why, torn = reader.problem
            if torn and path == paths[-1]:
                notes.append("%s: offset %d: %s (cut at the broker's next start)"
                             % (name, offset, why))
            else:
                damage.append("%s: offset %d: %s; the %d byte(s) from there on are not checked"
                              % (name, offset, why, reader.start + reader.size - offset))
        if previousEnd is not None and previousEnd != reader.start:
            damage.append("%s starts at offset %d but the segment before it ends at %d"
                          % (name, reader.start, previousEnd))
        previousEnd = reader.start + reader.size
    return len(paths), records, damage, notes


async def main(reactor, options, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    directories = [d for path in options["paths"] for d in partitionDirectories(path)]
    damaged = 0
    for directory in directories:
        # In a thread: a partition is up to terabytes.
        segments, records, damage, notes = await threads.deferToThread(
            checkPartition, directory)
        print("%s: %d segment(s), %d record(s), %s"
              % (os.path.basename(os.path.normpath(directory)), segments, records,
                 "DAMAGED" if damage else "ok"), file=out)
        for line in damage + notes:
            print("  " + line, file=out)
        out.flush()
        damaged += bool(damage)
    if damaged:
        print("%d of %d partition(s) damaged" % (damaged, len(directories)), file=err)
        return 1
    return 0
