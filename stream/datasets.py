"""Where public data sets live on a user's machine, and how they get there.

A clone of the repository holds no data (MovieLens' licence forbids redistribution), so
tools look for a data set in this order: a path given on the command line (``--data``),
then ``$INTTOWER_DATA/<name>``, then the cache ``$XDG_CACHE_HOME/inttower/<name>``
(``~/.cache/inttower``). `download_movielens` fills the data home (``$INTTOWER_DATA`` if
set, else the cache) from GroupLens: streamed with a progress bar into a temporary file,
checked against GroupLens' published MD5, unpacked into a temporary folder and renamed
into place, so an interrupted download never leaves a half data set behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DATA_ENV = "INTTOWER_DATA"
CACHE_SUBDIR = "inttower"
DOWNLOAD_CHUNK_BYTES = 1 << 16
DOWNLOAD_TIMEOUT_S = 60.0


class DataNotFoundError(FileNotFoundError):
    """A data set is not on this machine; the message says how to get it."""


class DownloadError(RuntimeError):
    """A download failed or its checksum did not match; nothing was left in place."""


@dataclass(frozen=True)
class Archive:
    """A zip archive holding one data set folder ``name`` (GroupLens' layout)."""

    name: str
    url: str
    md5: str  # as published beside the archive (GroupLens: <archive>.md5)
    required_file: str  # present only in a complete copy (ML-1M's ratings.dat, ...)


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
MOVIELENS_ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive("ml-100k", f"{GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "u.data"),
    "ml-1m": Archive("ml-1m", f"{GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ratings.dat"),
}


def _env_home() -> Path | None:
    return Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else None


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / CACHE_SUBDIR


def data_home() -> Path:
    """Where downloads go: ``$INTTOWER_DATA`` if set, else the user's cache directory."""
    return _env_home() or _cache_home()


def candidate_dirs(name: str, explicit: str | Path | None = None) -> list[Path]:
    """The places `find_dataset` looks for data set ``name``, in order."""
    places = [Path(explicit).expanduser()] if explicit else []
    if (env := _env_home()) is not None:
        places.append(env / name)
    places.append(_cache_home() / name)
    return places


def find_dataset(name: str, required_file: str, explicit: str | Path | None = None) -> Path | None:
    """The first candidate folder of ``name`` that holds ``required_file``, or None."""
    for place in candidate_dirs(name, explicit):
        if (place / required_file).is_file():
            return place
    return None


def how_to_get(name: str) -> str:
    """One line telling a user how to make data set ``name`` available."""
    fetch = f"`inttower data movielens --download {name}`" if name in MOVIELENS_ARCHIVES else "a copy"
    return f"get it with {fetch}, or set {DATA_ENV} to a folder holding {name}/"


def find_movielens(name: str = "ml-100k", explicit: str | Path | None = None) -> Path | None:
    """The folder of a complete MovieLens copy (``ml-100k`` or ``ml-1m``), or None."""
    return find_dataset(name, MOVIELENS_ARCHIVES[name].required_file, explicit)


def require_movielens(name: str = "ml-100k", explicit: str | Path | None = None) -> Path:
    """Like `find_movielens`, raising `DataNotFoundError` with the places looked at."""
    found = find_movielens(name, explicit)
    if found is None:
        looked = ", ".join(str(p) for p in candidate_dirs(name, explicit))
        raise DataNotFoundError(f"MovieLens {name} not found (looked in {looked}); {how_to_get(name)}")
    return found


def download_movielens(name: str, home: Path | None = None, progress: bool = True, archive: Archive | None = None) -> Path:
    """Fetch, verify and unpack MovieLens ``name`` into ``home`` (default `data_home`).

    Returns the data set folder; a complete copy already there is returned untouched.
    ``archive`` overrides the source (a mirror, or a test's local server).
    """
    if archive is None:
        if name not in MOVIELENS_ARCHIVES:
            raise ValueError(f"unknown MovieLens archive {name!r} (expected one of: {', '.join(MOVIELENS_ARCHIVES)})")
        archive = MOVIELENS_ARCHIVES[name]
    home = data_home() if home is None else Path(home)
    target = home / archive.name
    if (target / archive.required_file).is_file():
        return target
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{archive.name}-", dir=home) as scratch:
        zip_path = Path(scratch) / "archive.zip"
        _fetch(archive.url, zip_path, progress)
        digest = _md5(zip_path)
        if digest != archive.md5:
            raise DownloadError(f"{archive.url}: MD5 {digest} does not match the published {archive.md5}; nothing kept")
        unpacked = Path(scratch) / "unpacked"
        try:
            with zipfile.ZipFile(zip_path) as zf:
                _check_members(zf, archive)
                zf.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{archive.url}: not a zip archive ({exc})") from None
        if not (unpacked / archive.name / archive.required_file).is_file():
            raise DownloadError(f"{archive.url}: archive has no {archive.name}/{archive.required_file}")
        if (target / archive.required_file).is_file():  # another download finished meanwhile
            return target
        if target.exists():  # an incomplete copy (e.g. ML-1M without ratings.dat): replace it
            shutil.rmtree(target)
        try:
            (unpacked / archive.name).rename(target)
        except OSError as exc:
            if (target / archive.required_file).is_file():  # lost a race with another download: same data
                return target
            raise DownloadError(f"cannot move the unpacked data set to {target} ({exc})") from None
    return target


def _fetch(url: str, dest: Path, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url.rsplit('/', 1)[-1]}", disable=not progress) as bar:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
        raise DownloadError(f"{url}: download failed ({exc})") from None


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_members(zf: zipfile.ZipFile, archive: Archive) -> None:
    """Refuse members that would land outside the unpack folder (absolute paths, ``..``)."""
    for member in zf.namelist():
        if Path(member).is_absolute() or ".." in Path(member).parts:
            raise DownloadError(f"{archive.url}: unsafe member path {member!r}; nothing kept")
