"""Index versions on disk, and a reader that follows them from another process.

The directory is the contract between the trainer and serving processes:

* ``index-<version:010d>.faiss``: one file per version, written by `faiss.write_index`
  to a temp name, fsynced, renamed. A name is never rewritten in place, so a reader that
  memory-mapped a file keeps a consistent view even after the writer deletes it.
* ``manifest.json``: the newest version's metadata (version, item_count, heads, dim,
  checkpoint, created_at, file, bytes, sha256), replaced atomically (temp + fsync +
  rename). Readers look only at the manifest, never at directory listings.

One `VersionWriter` per directory. Version numbers must increase within a directory;
a trainer that restarts must continue from `VersionWriter.last_version` (or
`latest_manifest`), or older files would shadow the new ones.

Memory mapping (faiss-cpu 1.15.1, measured): ``faiss.IO_FLAG_MMAP`` does *not* map an
``IndexIDMap2`` over ``IndexFlat``: it only applies to IVF inverted lists, and the file is
read into memory. ``faiss.IO_FLAG_MMAP_IFC`` maps the flat codes (1M x 64 floats: 0.05 s
and ~100 MB resident for the id maps instead of 0.2 s and ~340 MB; the vectors stay in
the shared page cache). The reader uses ``IO_FLAG_MMAP_IFC``. An index loaded that way is
read-only in a dangerous way: ``remove_ids`` on it, or on a ``faiss.clone_index`` of it,
segfaults and ``add_with_ids`` aborts the process (the clone still views the mapping).
Never hand a mapped version to `LiveIndex` or any code that mutates indexes; read the
file with ``mmap=False`` (see `read_version_file`) when a mutable copy is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss

from index_sync.version import IndexVersion
from model.checkpoint import atomic_write_bytes, fsync_dir

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
INDEX_FILE_PATTERN = re.compile(r"^index-(\d{10})\.faiss$")
TMP_SUFFIX = ".tmp"
#: faiss flag that memory-maps IndexFlatCodes storage (IO_FLAG_MMAP does not; see above).
MMAP_READ_FLAGS = faiss.IO_FLAG_MMAP_IFC
#: Bytes hashed per read while verifying a file.
HASH_BLOCK_BYTES = 1 << 20
#: How many times a load retries when the manifest moved on while it was reading.
MAX_LOAD_ATTEMPTS = 3


def index_file_name(version: int) -> str:
    return f"index-{version:010d}.faiss"


class IndexFileError(Exception):
    """An index file or manifest was refused; the message names the file and the mismatch."""


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about the newest version. ``bytes`` and ``sha256`` are
    of the index file; ``created_at`` is the version's wall-clock creation time (s)."""

    version: int
    item_count: int
    heads: int
    dim: int
    checkpoint: str | None
    created_at: float
    file: str  # name relative to the directory
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, raw: bytes, source: Path) -> Manifest:
        try:
            data = json.loads(raw)
            manifest = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"{source}: unreadable manifest ({exc!r})") from exc
        if not INDEX_FILE_PATTERN.match(manifest.file):
            raise IndexFileError(f"{source}: manifest names an unexpected file {manifest.file!r}")
        return manifest


def latest_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory``, or None if there is none yet."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.from_json(raw, path)


class VersionWriter:
    """Writes each published version to ``directory`` and keeps the newest ``keep`` files.

    Not thread-safe: call `write` from one thread (the publishing thread). Each call costs
    one pass over the serialized index (written and hashed together) plus fsyncs.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f"*{TMP_SUFFIX}"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        manifest = latest_manifest(self.directory)
        self.last_version: int | None = manifest.version if manifest else None

    def write(self, version: IndexVersion) -> Path:
        """Write ``version``'s index file, then the manifest naming it; returns the file path."""
        if self.last_version is not None and version.version <= self.last_version:
            raise ValueError(
                f"{self.directory}: version {version.version} is not newer than {self.last_version} already"
                " there; continue numbering from VersionWriter.last_version after a restart"
            )
        name = index_file_name(version.version)
        path = self.directory / name
        size, sha256 = _write_index_hashed(version.merged_index(), path)  # base + delta: merged, O(items)
        manifest = Manifest(
            version=version.version,
            item_count=version.item_count,
            heads=version.heads,
            dim=version.dim,
            checkpoint=version.checkpoint,
            created_at=version.created_at,
            file=name,
            bytes=size,
            sha256=sha256,
        )
        atomic_write_bytes(self.directory / MANIFEST_NAME, json.dumps(asdict(manifest), indent=2).encode())
        self.last_version = version.version
        self._remove_old()
        logger.info("index version %d written: %s (%d bytes)", version.version, path, size)
        return path

    def _remove_old(self) -> None:
        files = sorted(p for p in self.directory.iterdir() if INDEX_FILE_PATTERN.match(p.name))
        for old in files[: -self.keep]:
            old.unlink(missing_ok=True)  # a reader that mapped it keeps its view (Linux semantics)


def _write_index_hashed(index: faiss.Index, path: Path) -> tuple[int, str]:
    """Serialize ``index`` to ``path`` atomically; its size and sha256 from the same pass."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:

            def sink(chunk: bytes) -> int:
                nonlocal size
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
                return len(chunk)

            faiss.write_index(index, faiss.PyCallbackIOWriter(sink))  # calls sink synchronously, unbuffered
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size, digest.hexdigest()


def read_version_file(directory: Path, manifest: Manifest, verify: bool = True, mmap: bool = True) -> IndexVersion:
    """Load the file ``manifest`` names as an `IndexVersion`, or raise `IndexFileError`.

    ``verify`` checks size and sha256 against the manifest before faiss parses the file
    (a hash of a 264 MB file takes ~0.2-0.3 s). ``mmap=True`` maps the vectors
    (read-only: see the module docstring); ``mmap=False`` gives a mutable copy.
    Raises FileNotFoundError if the file is gone (the writer may have moved on).
    """
    path = Path(directory) / manifest.file
    try:
        return _read_verified(path, manifest, verify, mmap)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read it ({exc})") from exc


def _read_verified(path: Path, manifest: Manifest, verify: bool, mmap: bool) -> IndexVersion:
    with open(path, "rb") as fh:
        if verify:
            size = os.fstat(fh.fileno()).st_size
            if size != manifest.bytes:
                raise IndexFileError(f"{path}: size {size} bytes, manifest says {manifest.bytes} (truncated or replaced)")
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
            if sha256 != manifest.sha256:
                raise IndexFileError(f"{path}: sha256 {sha256}, manifest says {manifest.sha256} (corrupted)")
        try:
            index = faiss.read_index(str(path), MMAP_READ_FLAGS if mmap else 0)
        except RuntimeError as exc:
            raise IndexFileError(f"{path}: faiss could not read it ({str(exc).splitlines()[0]})") from exc
        if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
            raise FileNotFoundError(f"{path} was replaced while being read")
    if index.d != manifest.dim or index.ntotal != manifest.item_count * manifest.heads:
        raise IndexFileError(
            f"{path}: holds {index.ntotal} vectors of dim {index.d}, manifest says"
            f" {manifest.item_count} items x {manifest.heads} heads of dim {manifest.dim}"
        )
    return IndexVersion(
        version=manifest.version,
        index=index,
        heads=manifest.heads,
        dim=manifest.dim,
        checkpoint=manifest.checkpoint,
        created_at=manifest.created_at,
    ).warm()


class _ManifestMoved(Exception):
    """Internal: the manifest changed while its file was being loaded."""


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class IndexReader:
    """Follows the newest version in ``directory`` for a serving process.

    Call `maybe_reload` yourself, or `start` a polling thread (every ``poll_interval_s``
    seconds) and `stop` it. Take `current` once per request and use that version for the
    whole request: a reload replaces the reference, and requests holding the old version
    finish on it.

    A version is loaded when the manifest names a different (version, sha256) than the
    one served; a version number lower than the served one is followed too, with a
    warning (the writer's directory was reset). A file that fails verification or
    parsing is refused: logged at ERROR naming the file and the mismatch, stored in
    ``last_error``, counted in ``refused_total``, and the last good version stays
    current. A refused manifest entry is not retried until the manifest changes: the
    trainer's next version replaces it, but an idle trainer publishes none (restarting it
    re-publishes every item).

    Thread-safety: `current` may be read from any thread; `maybe_reload` calls are
    serialised by a lock.
    """

    def __init__(self, directory: Path, poll_interval_s: float = 1.0, verify: bool = True, mmap: bool = True) -> None:
        self.directory = Path(directory)
        self.poll_interval_s = poll_interval_s
        self.verify = verify
        self.mmap = mmap
        self.refused_total = 0
        self.reloads_total = 0
        self.last_error: str | None = None
        self._current: IndexVersion | None = None
        self._served: tuple[int, str] | None = None  # (version, sha256) of current
        self._refused: tuple[int, str] | None = None
        self._manifest_seen: bytes | None = None  # manifest content last examined
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> IndexVersion | None:
        """The version to serve from (hold it for one request); None before the first load."""
        return self._current

    def maybe_reload(self) -> bool:
        """Load and publish the manifest's version if it is new and good; True if swapped.

        Cheap when nothing changed (one read of the small manifest). Never raises for a
        bad file or manifest (see the class docstring).
        """
        with self._reload_lock:
            for attempt in range(1, MAX_LOAD_ATTEMPTS + 1):
                try:
                    return self._reload_once(last_attempt=attempt == MAX_LOAD_ATTEMPTS)
                except _ManifestMoved:
                    continue
            return False

    def _reload_once(self, last_attempt: bool) -> bool:
        manifest_path = self.directory / MANIFEST_NAME
        try:
            # Compare contents, not stat: timestamps can be coarser than two writes apart.
            raw = manifest_path.read_bytes()
        except FileNotFoundError:
            return False
        if raw == self._manifest_seen:
            return False
        self._manifest_seen = raw
        try:
            manifest = Manifest.from_json(raw, manifest_path)
        except IndexFileError as exc:
            self._refuse(str(exc))
            return False
        key = (manifest.version, manifest.sha256)
        if key == self._served or key == self._refused:
            return False
        try:
            try:
                version = read_version_file(self.directory, manifest, verify=self.verify, mmap=self.mmap)
            except FileNotFoundError as exc:
                if not last_attempt and _read_or_none(manifest_path) != raw:
                    # The writer published again and deleted this file meanwhile: look again.
                    logger.info("index file went away while loading (%s); re-reading the manifest", exc)
                    self._manifest_seen = None
                    raise _ManifestMoved from exc
                raise IndexFileError(f"{self.directory / manifest.file}: named by the manifest but missing") from exc
        except IndexFileError as exc:
            self._refused = key
            self._refuse(str(exc))
            return False
        if self._current is not None and version.version < self._current.version:
            logger.warning("index version went back from %d to %d (writer reset?); following it",
                           self._current.version, version.version)
        self._current = version  # the one-reference swap readers rely on
        self._served = key
        self.reloads_total += 1
        logger.info("serving index version %d (%d items)", version.version, version.item_count)
        return True

    def _refuse(self, reason: str) -> None:
        self.refused_total += 1
        self.last_error = reason
        served = self._current.version if self._current is not None else None
        logger.error("refused index: %s; still serving version %s", reason, served)

    def start(self) -> None:
        """Start the polling thread (a daemon thread; idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="index-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the polling thread and wait up to ``timeout_s`` for it (a load in flight finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.maybe_reload()
            except Exception:  # keep serving whatever happens; the next poll retries
                logger.exception("index reader poll failed")
            self._stop.wait(self.poll_interval_s)

    def wait_for_version(self, version: int, timeout_s: float) -> IndexVersion:
        """Block until a version >= ``version`` is current (polls itself if not started).

        Raises TimeoutError naming the version served. For tests and start-up checks.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            current = self._current
            if current is not None and current.version >= version:
                return current
            if time.monotonic() >= deadline:
                served = current.version if current is not None else None
                raise TimeoutError(f"{self.directory}: version {version} not loaded within {timeout_s} s (serving {served})")
            if self._thread is None:
                self.maybe_reload()
            time.sleep(min(self.poll_interval_s, 0.01))

    def __enter__(self) -> IndexReader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
