"""Where a location's bytes live: a pyarrow filesystem for a local path or an object-store URI.

Shared by the lake (data files, the Delta log), the training ranks (their files of a snapshot), the model
registry and cleanse (the landing folder); it needs pyarrow only.
"""

from __future__ import annotations

import pyarrow.fs as pafs


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and base path for a table location (local path or object-store URI)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    if uri.startswith("s3a://") or uri.startswith("s3n://"):
        uri = "s3://" + uri.split("://", 1)[1]
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), uri[len("file://") :]
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path
