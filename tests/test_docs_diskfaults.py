"""
The example of docs/disk-faults.md, run as written on a partition
directory with one damaged record.
"""

import contextlib
import io
import os
import re
import textwrap

from twisted.trial import unittest

from tests.broker.store.helpers import record

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "disk-faults.md")


class DiskFaultsDocTests(unittest.TestCase):
    def test_verifyPartition(self):
        with open(DOC) as f:
            [example] = re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)
        directory = os.path.abspath(self.mktemp())
        partition = os.path.join(directory, "data", "orders-0")
        os.makedirs(partition)
        records = [record(i + 1, b"order %d" % (i,)) for i in range(3)]
        data = bytearray(b"".join(records))
        data[len(records[0]) + 21] ^= 1
        with open(os.path.join(partition, "%020d.meta" % (0,)), "wb") as f:
            f.write(data)
        output = io.StringIO()
        cwd = os.getcwd()
        os.chdir(directory)
        try:
            with contextlib.redirect_stdout(output):
                exec(textwrap.dedent(example), {})
        finally:
            os.chdir(cwd)
        start, end = len(records[0]), len(records[0]) + len(records[1])
        self.assertEqual(
            output.getvalue(),
            "data/orders-0/00000000000000000000.meta 2 [(%d, %d, 'checksum mismatch')] "
            "None None\n" % (start, end),
        )
