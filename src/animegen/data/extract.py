"""Safe extraction of zip and tar archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

Entries with absolute or Windows-drive paths, ``..`` components, links, devices and fifos are
refused (and listed with their reason); entries and bytes are counted while streaming, and a limit
that is passed stops the extraction with an error. Every directory is opened relative to its
parent with ``O_NOFOLLOW``, so a symlink already in the target is never followed, and every file
is written to a temporary name and renamed.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import functools
import gzip
import lzma
import os
import re
import secrets
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_TOTAL_BYTES = 64 << 30
DEFAULT_MAX_ENTRIES = 2_000_000
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
CHUNK = 1 << 20
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_ZIP_ENTRY_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError)


class ArchiveError(ValueError):
    """An archive cannot be read (corrupt, truncated, or not an archive)."""


class ExtractionLimitError(ArchiveError):
    """An archive holds more entries or more bytes than the extraction limits allow."""


class UnsafePathError(ValueError):
    """An entry name that must not be written (its message is the reason)."""


def archive_kind(path: str | os.PathLike) -> str | None:
    """'zip', 'tar' or None: by suffix first, else by the file's first bytes."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        if f.read(4) in (b"PK\x03\x04", b"PK\x05\x06"):
            return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


def safe_parts(name: str) -> list[str]:
    """The path components of an archive (or object-store) entry name, or UnsafePathError.

    Backslashes count as separators (Windows archives); empty and ``.`` components are dropped.
    """
    if "\x00" in name:
        raise UnsafePathError("NUL byte in the name")
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        raise UnsafePathError("absolute path")
    if re.match(r"^[A-Za-z]:", norm):
        raise UnsafePathError("absolute Windows drive path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError("parent-directory component (..)")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise UnsafePathError("a name component is longer than 255 bytes")
    return parts


def safe_extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[dict]:
    """Extract ``archive`` into ``target`` (created if needed); return the refused entries.

    Each refused entry is ``{"path": name in the archive, "reason": why}``. More than
    ``max_entries`` entries (refused ones included) or more than ``max_total_bytes`` of file
    content raise ExtractionLimitError; an unreadable archive raises ArchiveError naming it.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    kind = archive_kind(archive)
    if kind is None:
        raise ArchiveError(f"{archive} is not a zip or tar archive (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz)")
    Path(target).mkdir(parents=True, exist_ok=True)
    with _Writer(Path(target), archive, max_total_bytes, max_entries) as writer:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, writer)
        return writer.refused


class _Writer:
    """Creates directories and files strictly below ``target`` and keeps the counts and refusals."""

    def __init__(self, target: Path, archive: Path, max_total_bytes: int, max_entries: int):
        self.root = target.resolve()
        self.archive, self.max_total_bytes, self.max_entries = archive, max_total_bytes, max_entries
        self.entries = self.total_bytes = 0
        self.refused: list[dict] = []
        self.seen: set[str] = set()  # files written, to refuse duplicates
        self.checked_dirs: set[tuple[str, ...]] = set()  # folders that resolve inside the root
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self._cached: tuple[tuple[str, ...], int] | None = None  # the last directory opened

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self._cached:
            os.close(self._cached[1])
        os.close(self.root_fd)

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise self.limit_error("entries")

    def count_bytes(self, n: int) -> None:
        self.total_bytes += n
        if self.total_bytes > self.max_total_bytes:
            raise self.limit_error("bytes")

    def limit_error(self, what: str) -> ExtractionLimitError:
        if what == "entries":
            limit = f"has more than max_entries={self.max_entries} entries"
        else:
            limit = f"expands to more than max_total_bytes={self.max_total_bytes} bytes"
        return ExtractionLimitError(
            f"{self.archive} {limit}; extraction stopped (raise the limit only if the archive is trusted)"
        )

    def refuse(self, name: str, reason: str) -> None:
        self.refused.append({"path": name, "reason": reason})

    def check(self, name: str) -> tuple[str, ...] | None:
        """The entry's safe path components, or None after recording why it is refused."""
        try:
            parts = tuple(safe_parts(name))
        except UnsafePathError as e:
            self.refuse(name, str(e))
            return None
        if not parts:
            return parts
        parent = parts[:-1]
        if parent not in self.checked_dirs:  # we never create links, so a folder checked stays safe
            if not self.root.joinpath(*parent).resolve().is_relative_to(self.root):
                self.refuse(name, "resolves outside the target directory (through an existing symlink)")
                return None
            self.checked_dirs.add(parent)
        if os.path.islink(self.root.joinpath(*parts)):
            self.refuse(name, "an existing symlink is at this path (never followed)")
            return None
        return parts

    def make_dir(self, name: str, parts: tuple[str, ...]) -> None:
        try:
            self._dir_fd(parts)
        except OSError as e:
            self.refuse(name, _conflict_reason(e))

    def write_file(self, name: str, parts: tuple[str, ...], read: Callable[[int], bytes]) -> None:
        """Stream ``read`` into the file at ``parts`` through a temporary name, counting bytes."""
        if not parts:
            self.refuse(name, "empty file name")
            return
        key = "/".join(parts)
        if key in self.seen:
            self.refuse(name, "duplicate of an earlier entry")
            return
        try:
            dfd = self._dir_fd(parts[:-1])
        except OSError as e:
            self.refuse(name, _conflict_reason(e))
            return
        tmp = f".{parts[-1][:64]}.{secrets.token_hex(4)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := read(CHUNK):
                    self.count_bytes(len(chunk))
                    f.write(chunk)
            os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as e:
            os.unlink(tmp, dir_fd=dfd)
            if isinstance(e, (IsADirectoryError, NotADirectoryError)):
                self.refuse(name, _conflict_reason(e))
                return
            raise
        self.seen.add(key)

    def _dir_fd(self, parts: tuple[str, ...]) -> int:
        """An open descriptor of the directory ``parts`` below the root, created as needed."""
        if not parts:
            return self.root_fd
        if self._cached and self._cached[0] == parts:
            return self._cached[1]
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except NotADirectoryError:  # Linux says ENOTDIR for a symlink here too: tell them apart
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, "existing symlink", part) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        if self._cached:
            os.close(self._cached[1])
        self._cached = (parts, fd)
        return fd


def _conflict_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "path passes through an existing symlink"
    if e.errno == errno.ENOTDIR:
        return "path conflicts with an existing file"
    if e.errno == errno.EISDIR:
        return "path conflicts with an existing directory"
    raise e


def _extract_zip(archive: Path, w: _Writer) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"{archive} is not a readable zip archive ({e}); re-download it or check the file") \
            from None
    with zf:
        infos = zf.infolist()
        # The central directory lists every entry and its size: fail before writing when it already
        # says too much. The real bytes are still counted while streaming.
        if len(infos) > w.max_entries:
            raise w.limit_error("entries")
        if sum(i.file_size for i in infos) > w.max_total_bytes:
            raise w.limit_error("bytes")
        for info in infos:
            w.count_entry()
            name, kind = info.filename, stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                w.refuse(name, "symbolic link")
            elif kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                w.refuse(name, f"special file ({_special(kind)})")
            elif info.flag_bits & 0x1:
                w.refuse(name, "encrypted entry")
            elif (parts := w.check(name)) is None:
                continue
            elif info.is_dir() or kind == stat.S_IFDIR:
                w.make_dir(name, parts)
            else:
                try:
                    with zf.open(info) as src:
                        w.write_file(name, parts, _reader(src.read, _CorruptEntry, _ZIP_ENTRY_ERRORS))
                except (_CorruptEntry, *_ZIP_ENTRY_ERRORS) as e:
                    w.refuse(name, f"corrupt entry: {e}")


def _extract_tar(archive: Path, w: _Writer) -> None:
    def corrupt(detail: str, at: str | None = None) -> ArchiveError:
        where = f" at entry {at!r}" if at else ""
        return ArchiveError(f"{archive} is corrupt or truncated{where} ({detail}); re-download it or check it")

    with open(archive, "rb") as raw, _decompressed(raw) as plain:
        stream = _TailReader(plain)
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")  # pure streaming: never seeks back
        except _STREAM_ERRORS as e:
            raise corrupt(f"not a readable tar archive: {e}") from None
        with tf:
            while True:
                try:
                    member = tf.next()
                except _STREAM_ERRORS as e:
                    raise corrupt(f"{type(e).__name__}: {e}") from None
                if member is None:
                    # tarfile also stops quietly at a truncated or garbled header: only a block of
                    # zeros is a real end of archive.
                    if not stream.zero_block_at(tf.offset):
                        raise corrupt(f"no end-of-archive marker after byte {tf.offset}")
                    return
                tf.members = []  # tarfile keeps every header it has read: drop them, we stream
                w.count_entry()
                name = member.name
                if member.issym():
                    w.refuse(name, f"symbolic link (to {member.linkname})")
                elif member.islnk():
                    w.refuse(name, f"hard link (to {member.linkname})")
                elif member.ischr() or member.isblk():
                    w.refuse(name, "device file")
                elif member.isfifo():
                    w.refuse(name, "fifo")
                elif not (member.isreg() or member.isdir()):
                    w.refuse(name, f"unsupported tar entry type {member.type!r}")
                elif (parts := w.check(name)) is None:
                    continue
                elif member.isdir():
                    w.make_dir(name, parts)
                else:
                    src = tf.extractfile(member)
                    assert src is not None
                    read = _reader(src.read, functools.partial(corrupt, at=name), _STREAM_ERRORS)
                    w.write_file(name, parts, read)


def _decompressed(raw: BinaryIO) -> contextlib.AbstractContextManager[BinaryIO]:
    """A reader of the tar inside gzip/bzip2/xz (by magic bytes), or ``raw`` itself.

    These readers raise EOFError on a truncated stream, which tarfile's own stream mode does not.
    """
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return contextlib.nullcontext(raw)


class _TailReader:
    """A forward-only reader that remembers the last bytes it returned (to check the end marker)."""

    KEEP = 32 * 1024  # more than tarfile reads ahead of a header (one 10 KiB record)

    def __init__(self, raw: BinaryIO):
        self.raw, self.total, self.tail = raw, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.total += len(data)
        self.tail = data[-self.KEEP:] if len(data) >= self.KEEP else (self.tail + data)[-self.KEEP:]
        return data

    def zero_block_at(self, offset: int) -> bool:
        start = offset - (self.total - len(self.tail))
        block = self.tail[start:start + tarfile.BLOCKSIZE] if start >= 0 else b""
        return len(block) == tarfile.BLOCKSIZE and not any(block)


class _CorruptEntry(Exception):
    pass


def _reader(
    read: Callable[[int], bytes], error: Callable[[str], Exception], catch: tuple
) -> Callable[[int], bytes]:
    """``read`` with the archive library's failures turned into ``error(message)``.

    Only reading the archive is wrapped, so a local write error (disk full) is never mistaken for
    a corrupt archive.
    """

    def guarded(n: int) -> bytes:
        try:
            return read(n)
        except catch as e:
            raise error(f"{type(e).__name__}: {e}") from None

    return guarded


def _special(kind: int) -> str:
    return {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(kind, f"file type {oct(kind)}")
