"""
Speed of the record check behind recovery, the background verification and
L{metamorphosis.broker.store.verify.verifyPartition} (docs/disk-faults.md).

It writes a segment of SIZE MiB of records of BODY bytes in a temporary
directory, then prints the MB/s of a scan of the whole segment, of a scan
with one damaged record in the middle, and of a scan through a damaged
range of GARBAGE KiB of random bytes (the byte-by-byte resynchronisation,
as the time beyond the clean scan).
The file is in the page cache: the figures are the CPU cost, the disk rate
is bounded separately by C{verifyBytesPerSecond}.

    .venv/bin/python benchmarks/verify.py
    .venv/bin/python benchmarks/verify.py --size 256 --body 1024 --garbage 4096
"""

import argparse
import os
import tempfile
import time

from metamorphosis.broker.store.verify import scanRecords
from metamorphosis.protocol.records import encodeRecord


def scan(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        started = time.perf_counter()
        result = scanRecords(fd, size)
        return size, time.perf_counter() - started, result
    finally:
        os.close(fd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="segment MiB")
    parser.add_argument("--body", type=int, default=1024, help="record body bytes")
    parser.add_argument("--garbage", type=int, default=1024, help="damaged KiB")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "%020d.meta" % (0,))
        record = encodeRecord(1, 0, os.urandom(options.body))
        count = options.size * 1024 * 1024 // len(record)
        data = bytearray(record * count)
        with open(path, "wb") as f:
            f.write(data)
        size, clean, result = scan(path)
        print("clean:        %8.1f MB/s (%d records)" % (size / clean / 1e6, result.count))
        middle = (count // 2) * len(record) + 25
        data[middle] ^= 0xFF
        with open(path, "wb") as f:
            f.write(data)
        size, seconds, result = scan(path)
        print("one damaged:  %8.1f MB/s (%d records, %d damaged range(s))"
              % (size / seconds / 1e6, result.count, len(result.damaged)))
        data[middle] ^= 0xFF
        start = (count // 2) * len(record)
        garbage = options.garbage * 1024
        data[start:start + garbage] = os.urandom(garbage)
        with open(path, "wb") as f:
            f.write(data)
        size, seconds, result = scan(path)
        damaged = sum(d.end - d.start for d in result.damaged)
        extra = seconds - clean
        print("garbage:      %8.1f s more than the clean scan for %d KiB of damaged bytes "
              "(%.1f us per damaged byte), %d records kept"
              % (extra, damaged // 1024, extra * 1e6 / max(damaged, 1), result.count))


if __name__ == "__main__":
    main()
