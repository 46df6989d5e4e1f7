"""Source files: listing, identity (size, modification time, content hash), first lines.

A file is named by one canonical form everywhere: the plain path Hadoop's
listing gives (`file:/in dir/été 100%.txt`). Spark reports rows'
`_metadata.file_path` percent-encoded (`file:/in%20dir/%C3%A9t%C3%A9%20100%25.txt`
for some characters, not others); `canonical_file_path` turns it back, so
rows match their file whatever characters its name holds.

Paths are literal: glob characters (`[`, `]`, `{`, `}`, `*`, `?`) in a
configured path or a file name are escaped before Spark sees them.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from shopseg.config import ShopsegError

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 8 << 20
_GLOB = re.compile(r"([\\\[\]{}*?])")


class SourceFilesError(ShopsegError):
    """A source's files cannot be listed or read."""


@dataclass(frozen=True)
class SourceFile:
    """A file as listed: canonical path, size in bytes, modification time (UTC)."""

    path: str
    size: int
    modified: dt.datetime


def literal(path: str) -> str:
    """`path` with Hadoop glob characters escaped, so Spark reads exactly that file."""
    return _GLOB.sub(r"\\\1", path)


def canonical_file_path(file_path: Column) -> Column:
    """Spark's percent-encoded `_metadata.file_path` as the listing's plain path.

    `url_decode` would read a literal `+` as a space; Spark leaves `+` as it
    is in the encoded path, so it is protected first.
    """
    return F.url_decode(F.replace(file_path, F.lit("+"), F.lit("%2B")))


def list_files(spark: SparkSession, path: str) -> list[SourceFile]:
    """Every file under `path` (a file or a folder, recursively), sorted by path.

    Hidden files and folders (names starting with `_` or `.`) are left out, as
    Spark's readers leave them out. Local paths are listed by Arrow (a
    folder of 365 daily files: ~0.05 s); other file systems through Spark,
    which holds their credentials (~4 s for the same folder, a Spark job).

    Raises:
        SourceFilesError: the path does not exist or cannot be listed.
    """
    listed = _list_local(path) if _is_local(path) else _list_with_spark(spark, path)
    return sorted(listed, key=lambda f: f.path)


def _is_local(path: str) -> bool:
    return path.startswith("file:") or "://" not in path and not path.startswith("dbfs:")


def _hidden(name: str) -> bool:
    """Spark's rule for names its file readers skip."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".")


def _list_local(path: str) -> list[SourceFile]:
    from pyarrow import fs

    filesystem, inner = _arrow_fs(path)
    root = os.path.abspath(inner)
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise SourceFilesError(f"path {path} does not exist")
    try:
        infos = (
            [info]
            if info.type == fs.FileType.File
            else filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        )
    except OSError as exc:
        raise SourceFilesError(f"cannot list {path}: {exc}") from None
    found = []
    for item in infos:
        if item.type != fs.FileType.File:
            continue
        below = os.path.relpath(item.path, root).split(os.sep) if item.path != root else []
        if any(_hidden(part) for part in below):
            continue
        # Milliseconds, as Hadoop's listing gives them (identities stay comparable).
        millis = item.mtime_ns // 1_000_000
        modified = dt.datetime.fromtimestamp(millis // 1000, dt.UTC).replace(
            tzinfo=None, microsecond=millis % 1000 * 1000
        )
        found.append(SourceFile(f"file:{item.path}", item.size, modified))
    return found


def _list_with_spark(spark: SparkSession, path: str) -> list[SourceFile]:
    try:
        listing = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(literal(path))
            # Without `content` the reader lists; it does not read the files.
            .select("path", "length", "modificationTime")
            .collect()
        )
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise SourceFilesError(f"path {path} does not exist") from None
        raise SourceFilesError(f"cannot list {path}: {exc}") from None
    return [SourceFile(r.path, r.length, r.modificationTime.replace(tzinfo=None)) for r in listing]


def _arrow_fs(path: str):
    """A pyarrow file system and the path inside it for a Hadoop-style path."""
    from pyarrow import fs

    if path.startswith("file:"):
        return fs.LocalFileSystem(), re.sub(r"^file:(//)?", "", path)
    if path.startswith("dbfs:/"):  # Databricks mounts DBFS under /dbfs on every node
        return fs.LocalFileSystem(), "/dbfs/" + path[len("dbfs:/") :].lstrip("/")
    if "://" not in path:
        return fs.LocalFileSystem(), path
    return fs.FileSystem.from_uri(arrow_uri(path))


def arrow_uri(path: str) -> str:
    """The URI Arrow (and delta-rs, boto3) give the object Hadoop names `path`.

    Hadoop's S3 connectors name S3 objects s3a:// (and the old s3n://); the
    others take s3://, with the endpoint and credentials from the AWS
    environment variables (AWS_ENDPOINT_URL for a store that is not AWS).
    """
    return re.sub(r"^s3[an]://", "s3://", path)


def _sha256_of(path: str) -> str:
    filesystem, inner = _arrow_fs(path)
    digest = hashlib.sha256()
    with filesystem.open_input_stream(inner, compression=None) as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def content_hashes(spark: SparkSession, paths: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each file's bytes, streamed in chunks, in parallel Spark tasks.

    No file is ever held whole in memory (Spark's binaryFile would load each
    one into a single row).
    """
    if not paths:
        return {}

    from shopseg.spark import parallelism

    # A few files per task: one task per file cost ~21 s for 366 small files
    # on 2 cores, against 0.5 s in 4 tasks. A DataFrame of paths, not an RDD, so
    # Spark Connect runs it too.
    slices = min(len(paths), 4 * parallelism(spark))
    frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(slices)
    hashed = frame.mapInPandas(_hash_batches, "path string, sha256 string").collect()
    return {r["path"]: r["sha256"] for r in hashed}


def _hash_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`content_hashes`' task: the SHA-256 of each path of each batch."""
    for batch in batches:
        yield pd.DataFrame({"path": batch["path"], "sha256": batch["path"].map(_sha256_of)})


def publish_folder(staged: str, final: str) -> None:
    """Put the folder `staged` in the place of `final` (which may not exist yet),
    leaving nothing of the old `final` behind.

    On a local file system by two renames: a reader sees the old folder or the
    new one whole, never a mix. Object stores have no rename: the old folder is
    deleted and the new one copied, so a writer puts a manifest in it last.
    """
    from pyarrow import fs

    filesystem, source = _arrow_fs(staged)
    _, target = _arrow_fs(final)
    present = filesystem.get_file_info(target).type != fs.FileType.NotFound
    if isinstance(filesystem, fs.LocalFileSystem):
        old = f"{target}.replaced-{uuid.uuid4().hex[:8]}"
        if present:
            os.replace(target, old)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        if present:
            shutil.rmtree(old)
        return
    if present:
        filesystem.delete_dir(target)
    fs.copy_files(source, target, source_filesystem=filesystem, destination_filesystem=filesystem)
    filesystem.delete_dir(source)


def delete_folder(path: str) -> None:
    """Delete a folder and everything in it, if it exists."""
    from pyarrow import fs

    filesystem, inner = _arrow_fs(path)
    if filesystem.get_file_info(inner).type != fs.FileType.NotFound:
        filesystem.delete_dir(inner)


def file_inventory(folder: str) -> list[tuple[str, int, str]]:
    """Every file under `folder`: (path relative to it, bytes, sha256:<hex>), sorted."""
    from pyarrow import fs

    filesystem, inner = _arrow_fs(folder)
    found = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
    out = []
    for info in found:
        if info.type == fs.FileType.File:
            relative = info.path[len(inner.rstrip("/")) + 1 :]
            out.append((relative, info.size, _sha256_of(f"{folder.rstrip('/')}/{relative}")))
    return sorted(out)


def first_lines(
    path: str, n: int = 1, encoding: str | None = None, max_bytes: int = 1 << 20
) -> list[str]:
    """The first `n` non-blank lines of a text file (gzip, bz2 and other codecs
    detected by extension, as Spark does), without their line breaks, decoded
    from `encoding` (default UTF-8; invalid bytes as U+FFFD)."""
    filesystem, inner = _arrow_fs(path)
    with filesystem.open_input_stream(inner) as stream:
        head = stream.read(max_bytes)
    found = []
    # A spreadsheet's "CSV UTF-8" starts with a byte-order mark: not part of the header.
    if encoding is None or _codec_name(encoding) == "utf-8":
        head = head.removeprefix(codecs.BOM_UTF8)
    for line in re.split(rb"\r\n|\r|\n", head):
        text = line.decode(encoding or "utf-8", errors="replace")
        if text.strip():
            found.append(text)
            if len(found) == n:
                break
    return found


def _codec_name(encoding: str) -> str | None:
    try:
        return codecs.lookup(encoding).name
    except LookupError:  # a charset Java knows and Python does not
        return None


def first_line(path: str, encoding: str | None = None) -> str | None:
    """The first non-blank line of a text file (see `first_lines`); None for a file
    with no such line."""
    lines = first_lines(path, 1, encoding)
    return lines[0] if lines else None


# Extensions Spark's text reader decompresses (Hadoop's codecs), as Arrow detects them.
COMPRESSED_EXTENSIONS = (".gz", ".bz2", ".zst", ".lz4")


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_EXTENSIONS)


def write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to a local, `file:`, `dbfs:/` or Arrow-supported remote path,
    creating its folder."""
    filesystem, inner = _arrow_fs(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as out:
        out.write(text.encode("utf-8"))


class LockHeld(ShopsegError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(folder: str | None, name: str) -> Iterator[None]:
    """Hold an exclusive lock `name` in a local `folder` for the duration.

    An OS file lock (flock): the kernel releases it when the holder exits,
    even on kill -9, so a crashed run never blocks the next one. An object
    store has no such lock: for a remote lakehouse (`folder` None) nothing
    is locked, a warning says so, and Delta's optimistic concurrency is what
    refuses the second of two conflicting writes (docs/cluster-and-databricks.md).

    Raises:
        LockHeld: another process holds it (naming its pid).
    """
    if folder is None:
        log.warning(
            "the lakehouse is not on a local file system: %s runs without a lock; "
            "schedule one at a time",
            name,
        )
        yield
        return
    import fcntl
    import os

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockHeld(
                f"concurrent run conflict: another {name} is running on this lakehouse "
                f"({holder}); this one committed nothing. Run it again when that one "
                f"ends (lock file {path})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
