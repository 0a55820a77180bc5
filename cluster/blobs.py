"""Where blobs live: one directory per tenant under the platform's blob root.

    <root>/<tenant>/outputs/<execution>/<step>/<n>.parquet   Arrow tables of step outputs
    <root>/<tenant>/data/<object>/v<version>.parquet         large Arrow data objects
    <root>/<tenant>/backups/<backup id>/...                  backups of the tenant's state

The root (`Settings.blobs`) is a local path or an s3:// / gs:// URI, reached through
`pyarrow.fs`; paths inside it are joined with "/". A blob is named by a key relative to
one of these directories, which the platform keeps beside the data it belongs to (never
inside it), and every key is checked when it is used: an absolute path, a URI, a
backslash, "." or ".." or an empty segment is refused, so no key names a file outside
its directory.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import pyarrow.fs as pafs

from cluster.errors import InputInvalid

Area = Literal["outputs", "data", "backups"]
AREAS: tuple[Area, ...] = ("outputs", "data", "backups")
#: One path segment: no "/", no "\", no ":", and never "." or ".." (it cannot start with ".").
_SEGMENT = re.compile(r"^[A-Za-z0-9_=\[\]-][A-Za-z0-9_.=\[\]-]{0,199}$")


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or an s3:// / gs:// URI."""
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(root).absolute())


def check_key(key: str) -> str:
    """`key` if it is a relative path of plain segments.

    Raises: InputInvalid (absolute, a URI, "..", "." or an empty segment, or odd characters).
    """
    bad = [s for s in key.split("/") if not _SEGMENT.match(s)]
    if not key or bad:
        raise InputInvalid(
            "blob key",
            [
                f"{key!r} must be a relative path of segments matching {_SEGMENT.pattern} "
                f"(absolute paths, URIs, '.' and '..' are refused); bad segments: {bad!r}"
            ],
        )
    return key


def segment(text: str) -> str:
    """`text` as one key segment: itself when it is a valid one, else a digest of it."""
    if _SEGMENT.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:32]


class BlobDir:
    """One directory of blobs (a tenant's outputs, data or backups) and the keys under it."""

    def __init__(self, root: str, *parts: str) -> None:
        for part in parts:
            check_key(part)
        self.fs, base = filesystem(root)
        #: The directory inside `fs`, and the same as the URI (or path) it was given as.
        self.path = "/".join([base, *parts])
        self.uri = "/".join([root.rstrip("/"), *parts])

    def path_of(self, key: str) -> str:
        """The path of the blob `key` inside `fs`. Raises: InputInvalid (a bad key)."""
        return f"{self.path}/{check_key(key)}"


def tenant_dir(root: str, tenant: str, area: Area) -> BlobDir:
    """`<root>/<tenant>/<area>`. Raises: InputInvalid (a tenant that is not one segment)."""
    return BlobDir(root, tenant, area)


__all__ = ["AREAS", "Area", "BlobDir", "check_key", "filesystem", "segment", "tenant_dir"]
