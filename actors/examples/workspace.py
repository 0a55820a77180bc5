"""The directory a demo agent may read and write: every path a caller names stays inside it.

A task's caller (any key with the `agent` role) chooses the paths the review agents
read; the operator chooses the workspace (the spec's `config.root`, bounded by the
`workspace_root` setting). So a path is refused, before anything is opened, when it holds
"..", leaves the workspace, or passes through a symbolic link; files are opened
component by component under the workspace with `O_NOFOLLOW`, so a link planted after
the check is refused too. Reads take regular files of at most `max_bytes`: `/dev/zero`,
a FIFO or a huge file is refused before a byte is read. The report is written under a
name fixed by the operator in a directory fixed by the operator.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.errors import InputInvalid

#: The most a demo agent reads of one file (1 MiB).
MAX_READ_BYTES = 1 << 20
#: The most files `repo.list` lists: a walk of a huge tree is refused, not run.
MAX_FILES = 20_000
#: A report's file name: plain, Markdown (a `.pth` or a path is refused).
REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.md")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileRefused(OSError):
    """A file inside the workspace that is not read: not a regular file, or too large.

    An OSError so an analyser records it as that file's error, as it does an unreadable one.
    """


def bounded_dir(path: str | Path, bound: Path | None, what: str) -> Path:
    """`path` as an absolute, resolved directory inside `bound` (when there is one).

    Raises:
        ValueError: relative, not a directory, or outside `bound`.
    """
    given = Path(path)
    if not given.is_absolute():
        raise ValueError(f"{what} {str(path)!r} must be an absolute path")
    resolved = given.resolve()
    if bound is not None and not resolved.is_relative_to(bound.resolve()):
        raise ValueError(f"{what} {str(path)!r} is outside the workspace_root {str(bound)!r}")
    if not resolved.is_dir():
        raise ValueError(f"{what} {str(path)!r} is not a directory")
    return resolved


class Workspace:
    """Paths under one resolved directory, checked and opened without following links."""

    def __init__(self, root: Path, max_bytes: int = MAX_READ_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def inside(self, path: str, field: str) -> Path:
        """`path` (relative paths are taken from the root) as a path inside the workspace.

        Raises:
            InputInvalid: it holds "..", is outside the workspace, or crosses a symlink.
        """
        raw = Path(path)
        full = raw if raw.is_absolute() else self.root / raw
        if "\x00" in path or ".." in raw.parts:
            self._refuse(field, path, "must not contain '..' (or a NUL byte)")
        normal = Path(os.path.normpath(full))
        if not normal.is_relative_to(self.root):
            self._refuse(field, path, f"is outside the workspace {str(self.root)!r}")
        current = self.root
        for part in normal.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                self._refuse(field, path, f"passes through the symbolic link {str(current)!r}")
        return normal

    def _refuse(self, field: str, path: str, problem: str) -> None:
        raise InputInvalid("path", [f"{field}: {path!r} {problem}"])

    def directory(self, path: str, field: str) -> Path:
        """Raises: InputInvalid (see `inside`, or not a directory)."""
        found = self.inside(path, field)
        if not found.is_dir():
            self._refuse(field, path, "is not a directory")
        return found

    def python_files(self, base: Path, skip_dirs: set[str]) -> Iterator[Path]:
        """Regular `*.py` files under `base`, never entering or listing a symbolic link.

        Raises:
            InputInvalid: more than `MAX_FILES` files.
        """
        count = 0
        for top, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in skip_dirs)
            for name in files:
                path = Path(top, name)
                if name.endswith(".py") and not path.is_symlink() and path.is_file():
                    count += 1
                    if count > MAX_FILES:
                        self._refuse("root", str(base), f"has more than {MAX_FILES} files")
                    yield path

    def read_text(self, path: Path) -> str:
        """A regular file's text (UTF-8, bad bytes replaced), at most `max_bytes`.

        `path` must come from `inside`. Raises: FileRefused; OSError (a link appeared).
        """
        with _open_under(self.root, path.relative_to(self.root).parts, _READ_FLAGS) as fd:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileRefused(errno.EINVAL, "not a regular file", str(path))
            if info.st_size > self.max_bytes:
                raise FileRefused(
                    errno.EFBIG, f"larger than the {self.max_bytes}-byte read limit", str(path)
                )
            data = os.read(fd, self.max_bytes + 1)
        if len(data) > self.max_bytes:  # it grew since fstat
            raise FileRefused(errno.EFBIG, f"larger than {self.max_bytes} bytes", str(path))
        return data.decode("utf-8", errors="replace")


def write_report(directory: Path, name: str, text: str) -> Path:
    """Write `text` as `directory/name`, refusing a symbolic link at the name or in `directory`.

    Raises:
        InputInvalid: `directory/name` is a symbolic link or not a regular file.
    """
    try:
        with _open_under(Path("/"), directory.parts[1:], _WRITE_FLAGS, name, 0o644) as fd:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputInvalid("report", [f"{str(directory / name)!r} is not a regular file"])
            os.write(fd, text.encode())
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise InputInvalid(
            "report",
            [f"{str(directory / name)!r} (or a directory above it) is a symbolic link: refused"],
        ) from None
    return directory / name


@contextmanager
def _open_under(
    base: Path, parts: tuple[str, ...], flags: int, name: str = "", mode: int = 0
) -> Iterator[int]:
    """Open `parts` below `base` one directory at a time, none of them a symbolic link."""
    dirs, last = (parts, name) if name else (parts[:-1], parts[-1])
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in dirs:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        opened = os.open(last, flags, mode, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        yield opened
    finally:
        os.close(opened)
