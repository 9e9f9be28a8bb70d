"""Atomic file writes: a crash, a power cut or Ctrl-C never leaves half a file behind."""

import contextlib
import os
import tempfile

#: Prefix and suffix of the temporary files :func:`atomic_file` writes beside their target;
#: a process killed while writing leaves one behind, which a later run in that folder removes.
TEMPORARY_PREFIX = ".wasap-"
TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    The content is flushed to the disk (fsync) before the rename, and the
    rename itself is made durable, so after a crash ``path`` holds either the
    old content or the whole new one.

    Parameters
    ----------
    path : str or os.PathLike
    mode : {"wb", "w"}

    Yields
    ------
    file object
        Write the content to it; on an exception the temporary file is removed
        and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX, dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would.
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        _fsync_directory(directory)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def is_temporary(name):
    """Whether a file name is one of :func:`atomic_file`'s temporary files."""
    return name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX)


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (skipped where a directory cannot be opened or synced)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
