"""A decoder for tests: the real one, except on files whose names (or folders) ask for a fault. Used through
DANCEDATA_DECODER=faulty_decoder:read_clip (tests/ must be importable: pytest puts it on sys.path,
subprocesses get PYTHONPATH).

    *hang*   sleeps for an hour (a deadlocked decoder)
    *segv*   kills its own process with SIGSEGV (a decoder crash)
    *nomem*  raises MemoryError (the machine, not the video)
    *eio*    raises OSError(EIO) (a failing disk or network mount)
"""
import errno
import os
import signal
import time

from dancedata.decode import read_clip as real_read_clip

SPEC = "faulty_decoder:read_clip"


def read_clip(path, config, size):
    name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))  # the file and its folder
    if "hang" in name:
        time.sleep(3600)
    if "segv" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "nomem" in name:
        raise MemoryError()
    if "eio" in name:
        raise OSError(errno.EIO, "Input/output error", path)
    return real_read_clip(path, config, size)
