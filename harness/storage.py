"""Where a results root lives: a local folder, or a prefix on an object store (``s3://``, ``gs://``, any
pyarrow or fsspec filesystem), behind the few file operations the store needs.

A local folder keeps POSIX semantics: a temporary name, fsync, rename. An object store has no rename
and no lock, but a PUT is atomic (an object appears whole or not at all), so each file is one PUT and
the store keeps concurrent drivers apart by file names of their own (see ``harness/store.py``).
DuckDB reads local files itself; object-store files are read by pyarrow (DuckDB's httpfs extension
would need a download) and handed to DuckDB as Arrow datasets.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode, urlsplit

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_registered = itertools.count()
FOOTER_READS = 16  # Parquet footers read at once from an object store


def is_remote(root: str | os.PathLike) -> bool:
    """A URI with a scheme other than ``file``; a ``Path`` is always local (it has lost the ``//``)."""
    match = _URI.match(root) if isinstance(root, str) else None
    return bool(match) and match[1].lower() != "file"


def local_path(root: str | os.PathLike) -> Path:
    """The folder of a local root, ``file://`` URIs included."""
    return Path(urlsplit(root).path) if isinstance(root, str) and root.lower().startswith("file://") else Path(root)


def object_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it of an object-store URI.

    pyarrow's own filesystems (S3, GCS, HDFS, Azure) read the standard credentials themselves; for S3
    the endpoint in ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL`` is passed on, since pyarrow does
    not read it. Any other scheme goes to fsspec (``memory://``, ``az://``, ...), if it knows it.
    """
    parts = urlsplit(uri)
    shown = shown_uri(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if parts.scheme.lower() == "s3" and endpoint and "endpoint_override=" not in parts.query:
        query = "&".join(filter(None, [parts.query, urlencode({"endpoint_override": endpoint})]))
        uri = parts._replace(query=query).geturl()
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:  # OSError: e.g. no bucket, no libhdfs
        if "unrecognized filesystem type" not in str(exc).lower():
            raise ValueError(f"{shown}: {str(exc).strip().splitlines()[0]}") from None
    try:
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"{shown}: no filesystem for {parts.scheme}:// ({exc}); use a local folder, "
            "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or a scheme an installed fsspec package provides"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), path


def child(root: str | os.PathLike, name: str) -> str | Path:
    """The root ``name`` below ``root``: a subfolder, or the URI of the prefix under it (its query kept)."""
    if not is_remote(root):
        return local_path(root) / name
    parts = urlsplit(str(root))
    return parts._replace(path=f"{parts.path.rstrip('/')}/{name}").geturl()


def shown_uri(uri: str) -> str:
    """A URI as messages show it: without its query, which may hold keys (``?access_key=…``)."""
    return urlsplit(uri)._replace(query="", fragment="").geturl().rstrip("/")


def sql_string(value: str | os.PathLike) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class FileGone(FileNotFoundError):
    """A file that was listed is gone: a compaction removed it; listing again finds its successor."""


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path | PurePosixPath
    is_dir: bool


class LocalFiles:
    """A folder on this machine; DuckDB reads and writes its Parquet files directly."""

    remote = False

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = local_path(root)
        self.location = str(self.root)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def list(self, folder: Path) -> list[Entry]:
        if not folder.is_dir():
            return []
        return [Entry(e.name, Path(e.path), e.is_dir()) for e in os.scandir(folder)]

    def mtime(self, path: Path) -> float:
        return path.stat().st_mtime

    def read_bytes(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)

    def delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def relation(self, con: duckdb.DuckDBPyConnection, files: list[Path]) -> str:
        """``read_parquet`` over exact files; columns come from the files, never from the folder names."""
        listed = ", ".join(map(sql_string, files))
        return f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false)"

    def copy(self, con: duckdb.DuckDBPyConnection, select: str, path: Path, options: str) -> None:
        """The rows of ``select`` as a Parquet file at ``path``, under a temporary name until complete."""
        tmp = path.parent / f".{path.name}.tmp"
        try:
            con.execute(f"COPY ({select}) TO {sql_string(tmp)} ({options})")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class ObjectFiles:
    """A prefix on an object store: one PUT per file, read through pyarrow."""

    remote = True

    def __init__(self, uri: str) -> None:
        self.fs, base = object_filesystem(uri)
        self.root = PurePosixPath(base.rstrip("/"))
        self.location = shown_uri(uri)

    def exists(self, path: PurePosixPath) -> bool:
        return self.fs.get_file_info(str(path)).type != pafs.FileType.NotFound

    def check_writable(self) -> None:
        """Raise ValueError when the bucket is missing or cannot be reached (before a run starts)."""
        bucket = self.root.parts[0] if self.root.parts else ""
        try:
            missing = bool(bucket) and not self.exists(PurePosixPath(bucket))
        except OSError as exc:
            raise ValueError(f"{self.location}: {str(exc).strip().splitlines()[0]}") from None
        if missing:
            raise ValueError(f"{self.location}: bucket {bucket!r} does not exist; create it first")

    def list(self, folder: PurePosixPath) -> list[Entry]:
        infos = self.fs.get_file_info(pafs.FileSelector(str(folder), allow_not_found=True))
        return [Entry(i.base_name, PurePosixPath(i.path), i.type == pafs.FileType.Directory) for i in infos]

    def mtime(self, path: PurePosixPath) -> float:
        return (self.fs.get_file_info(str(path)).mtime_ns or 0) / 1e9

    def read_bytes(self, path: PurePosixPath) -> bytes | None:
        try:
            with self.fs.open_input_stream(str(path)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: PurePosixPath, data: bytes) -> None:
        with self.fs.open_output_stream(str(path)) as f:
            f.write(data)

    def delete(self, path: PurePosixPath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(str(path))

    def relation(self, con: duckdb.DuckDBPyConnection, files: list[PurePosixPath]) -> str:
        """The files as one Arrow dataset registered in ``con`` (its name returned), columns united by name."""
        import pyarrow.dataset as ds  # here, not at the top: it imports pandas, which a local `harness query` skips

        paths = [str(p) for p in files]
        try:
            found = ds.dataset(paths, filesystem=self.fs, format="parquet")
            with ThreadPoolExecutor(FOOTER_READS) as pool:  # one round trip each: overlap them
                schemas = list(pool.map(lambda fragment: fragment.physical_schema, found.get_fragments()))
        except OSError:  # pyarrow says so for any failed GET; a missing file is one the caller may list again
            if gone := next((p for p in files if not self.exists(p)), None):
                raise FileGone(str(gone)) from None
            raise
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        name = f"__harness_files_{next(_registered)}"
        con.register(name, ds.dataset(paths, schema=schema, filesystem=self.fs, format="parquet"))
        return name

    def copy(self, con: duckdb.DuckDBPyConnection, select: str, path: PurePosixPath, options: str) -> None:
        """Written to a local temporary file by DuckDB (streamed, any size), then uploaded in one piece."""
        with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
            local = Path(tmp) / path.name
            con.execute(f"COPY ({select}) TO {sql_string(local)} ({options})")
            pafs.copy_files(str(local), str(path), pafs.LocalFileSystem(), self.fs)


Files = LocalFiles | ObjectFiles


def open_root(root: str | os.PathLike) -> Files:
    return ObjectFiles(root) if is_remote(root) else LocalFiles(root)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a local file under a temporary name and rename it: readers see the old file or the whole new one.

    The file gets the mode any new file would (0666 less the umask), not mkstemp's private 0600,
    so a site or a results folder can be shared as the user's umask says.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` sets it to read it)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
