"""Files on disk are the owner's alone: the database and its WAL, the key file, the logs and the
sandbox state hold personal data (sealed or masked, but still no one else's to read).

:func:`private_umask` makes every file the process creates 0600 and every directory 0700; it
runs first thing in ``cardbot`` (bot/cli.py) and again when the app is built, for processes
that do not come through the command line. :func:`keep_private` also tightens what an older
version left readable: the whole ``var/`` tree, and the SQLite database with its ``-wal``,
``-shm`` and ``-journal`` files wherever it lives (only the files: the directory around a
database outside ``var/`` is the operator's, e.g. ``/tmp``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from storage.db import sqlite_file

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal")


def private_umask() -> None:
    """Files this process creates from now on are readable by their owner only."""
    os.umask(PRIVATE_UMASK)


def keep_private(var_dir: Path, database_url: str | None = None) -> None:
    """Set the private umask and take group and other access away from ``var_dir`` (its
    directories 0700, files 0600) and from the SQLite database files of ``database_url``."""
    private_umask()
    for path in _tree(var_dir):
        _tighten(path)
    database = sqlite_file(database_url) if database_url else None
    if database is not None:
        for suffix in SQLITE_SIDECARS:
            _tighten(database.with_name(database.name + suffix))


def _tree(root: Path) -> Iterator[Path]:
    if not root.is_dir() or root.is_symlink():
        return
    yield root
    for folder, dirs, files in os.walk(root):  # never follows symlinks
        base = Path(folder)
        for name in (*dirs, *files):
            yield base / name


def _tighten(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        return  # a link's target is not ours to change
    mode = stat.S_IMODE(info.st_mode)
    # The owner's bits stay (a directory keeps rwx); group and other lose everything.
    wanted = mode & stat.S_IRWXU | (stat.S_IRWXU if stat.S_ISDIR(info.st_mode) else 0)
    if mode == wanted:
        return
    try:
        path.chmod(wanted)
    except OSError as exc:  # not ours (another owner): say so, go on
        log.warning("cannot make %s private: %s", path, exc.strerror or exc)
