"""Atomic file writes: a crash or Ctrl-C never leaves half a file behind."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

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
    handle, temporary = tempfile.mkstemp(prefix=".wasap-", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would.
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, mode) as stream:
            yield stream
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
