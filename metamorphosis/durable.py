"""
Replacing a small file so that a crash leaves either the old or the new
content, never a mix or nothing: the checkpoints and heuristic decisions of
the transaction journal and a damaged partition's marker.
"""

import os


def replaceDurably(path, data):
    """
    Write C{data} (bytes) to C{path}: through a temporary file that is
    fsynced, renamed over C{path}, then the directory fsynced so that the
    rename itself survives a crash.  Blocking: run it in a thread.
    """
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
