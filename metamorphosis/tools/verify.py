"""
C{metaq verify}: check a partition's files.  It reads the files directly:
run it on the broker's host; a running broker only appends to them.

    metaq verify /var/lib/metaq/data/orders-0
    metaq verify /var/lib/metaq/data

A directory holding segment files is one partition; any other directory
is a data directory: each of its subdirectories holding segment files is
checked, with the store's own verification
(L{metamorphosis.broker.store.verify.verifyPartition}, which the broker
runs in the background too): every record's length and checksum, and the
segments' contiguity.  For each partition it prints the segments and
records checked and every problem: a damaged range (from a bad record to
where valid records start again; the records after it are checked too),
a segment that cannot be read, a gap or an overlap between segments.  An incomplete last record (a write cut short, which the broker
cuts at its next start) is reported but is no damage.  Exit status 1 when
a partition is damaged.
"""

import os
import sys

from twisted.internet import threads
from twisted.python import usage

from metamorphosis.broker.store.segment import offsetFromName
from metamorphosis.broker.store.verify import verifyPartition
from metamorphosis.tools.cli import ToolError, Verbosity


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
    Check the segments of one partition directory with the store's own
    verification (blocking: call it in a thread).

    @return: C{(segments, records, damage, notes)}: the lists of texts of
        what is damaged and of what is worth saying but is no damage.
    """
    reports, problems = verifyPartition(directory)
    damage, notes = [], []
    for report in reports:
        name = os.path.basename(report.path)
        if report.error is not None:
            damage.append("%s: cannot be read: %s" % (name, report.error))
        for start, end, reason in report.damaged:
            damage.append("%s: damaged from offset %d to %d (%d bytes): %s"
                          % (name, start, end, end - start, reason))
        if report.tornAt is not None:
            notes.append("%s: offset %d: incomplete last record (cut at the broker's next "
                         "start)" % (name, report.tornAt))
    damage += problems
    return len(reports), sum(report.records for report in reports), damage, notes


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
