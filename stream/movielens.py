"""Import a GroupLens MovieLens directory (ML-100K or ML-1M layout) as a click log.

The paper evaluates on MovieLens with explicit ratings turned into implicit clicks:
high ratings are positives, low ratings are negatives and the ambiguous middle is
dropped. This module does that conversion and nothing else, returning a table in the
click-log contract of `stream.clicklog` sorted in event-time order, so the streaming
trainer can replay it as if it were live traffic.

All GroupLens files are Latin-1 encoded (titles such as "Misérables, Les (1995)").
Parsing is column-wise with numpy so ML-1M's million ratings import in seconds; when a
column fails to parse, the offending line is located afterwards so the error can name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from stream.clicklog import click_log_schema
import pyarrow.compute as pc

from stream.delimited import (
    INT64_MAX,
    DataFormatError,
    Lines,
    check_unique,
    lookup,
    parse_int,
    parse_int_fields,
    read_lines,
    split_fields,
)

Layout = Literal["ml-100k", "ml-1m"]

#: Every GroupLens file is ISO-8859-1; decoding as UTF-8 fails on accented titles.
ENCODING = "latin-1"

#: The files each layout needs, in the order they are reported when missing.
LAYOUT_FILES: dict[Layout, tuple[str, ...]] = {
    "ml-100k": ("u.data", "u.user", "u.item"),
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
}
ML100K_GENRE_FILE = "u.genre"

#: Ratings are whole stars in this range in both layouts.
MIN_RATING, MAX_RATING = 1, 5
MS_PER_SECOND = 1000
MAX_TS_SECONDS = INT64_MAX // MS_PER_SECOND  # larger would overflow once turned into milliseconds
UNKNOWN_YEAR = 0
GENDERS = ("M", "F")

#: ML-100K u.item: 5 descriptive fields followed by one 0/1 flag per genre.
ML100K_ITEM_META_FIELDS = 5
#: GroupLens' genre order for u.item's flags, used when u.genre is absent.
ML100K_DEFAULT_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

#: Shown in error messages so a user can compare a bad line with what was expected.
ML100K_RATING_SPEC = "user\\titem\\trating\\ttimestamp"
ML100K_USER_SPEC = "id|age|gender|occupation|zip"
ML100K_ITEM_SPEC = "id|title|release date|video release date|IMDb URL|19 genre flags"
ML1M_RATING_SPEC = "UserID::MovieID::Rating::Timestamp"
ML1M_USER_SPEC = "UserID::Gender::Age::Occupation::Zip"
ML1M_MOVIE_SPEC = "MovieID::Title::Genres"

_YEAR_AT_END = re.compile(r"(\d{4})\s*$")  # "01-Jan-1995" (ML-100K release date)
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")  # "Toy Story (1995)" (ML-1M title)

USER_STRUCT = pa.struct(
    [
        ("user_id", pa.int64()),
        ("gender", pa.string()),
        ("age", pa.int64()),
        ("occupation", pa.string()),
        ("zip_prefix", pa.string()),
    ]
)
ITEM_STRUCT = pa.struct(
    [("item_id", pa.int64()), ("genres", pa.list_(pa.string())), ("year", pa.int64())]
)
#: The table `import_movielens` returns: the click-log identity columns plus both towers.
MOVIELENS_SCHEMA = click_log_schema(USER_STRUCT, ITEM_STRUCT)


@dataclass(frozen=True)
class MovieLensImport:
    """How ratings become click labels, and how user fields are coarsened.

    A rating ``>= positive_min_rating`` is a click (label 1), a rating
    ``<= negative_max_rating`` is a non-click (label 0); ratings strictly between the
    two thresholds are dropped. The paper's protocol is >= 4 positive, <= 2 negative,
    3 dropped. ``zip_prefix_len`` keeps the first characters of the zip code, which
    locate a user regionally without making the field a near-unique id.
    """

    positive_min_rating: int = field(default=4, metadata={"ge": MIN_RATING, "le": MAX_RATING})
    negative_max_rating: int = field(default=2, metadata={"ge": MIN_RATING - 1, "le": MAX_RATING})
    zip_prefix_len: int = field(default=2, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if self.negative_max_rating >= self.positive_min_rating:
            raise ValueError(
                f"negative_max_rating ({self.negative_max_rating}) must be below "
                f"positive_min_rating ({self.positive_min_rating}): a rating cannot be both"
            )
        if self.zip_prefix_len < 1:
            raise ValueError(f"zip_prefix_len must be >= 1, got {self.zip_prefix_len}")


# --------------------------------------------------------------------------- layout


def detect_layout(path: Path) -> Layout:
    """Say which GroupLens layout the directory ``path`` holds, or explain what is missing.

    Both layouts are recognised by their three core files; a partial copy (ML-1M without
    ratings.dat is common, the file being the large one) gets a message listing exactly
    which files each layout still lacks.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such directory (expected a GroupLens MovieLens folder)")
    if not path.is_dir():
        raise DataFormatError(f"{path}: not a directory (unzip the GroupLens archive and pass its folder)")
    missing = {
        layout: [name for name in names if not (path / name).is_file()]
        for layout, names in LAYOUT_FILES.items()
    }
    complete = [layout for layout, lacking in missing.items() if not lacking]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        raise DataFormatError(
            f"{path}: holds both the ML-100K and the ML-1M files; point at a folder with only one"
        )
    details = "; ".join(
        f"{layout.upper()} layout is missing {', '.join(lacking)}" for layout, lacking in missing.items()
    )
    raise DataFormatError(f"{path}: not a MovieLens directory: {details}")


# --------------------------------------------------------------------------- per-file readers


@dataclass(frozen=True)
class _Ratings:
    lines: Lines
    user_id: np.ndarray
    item_id: np.ndarray
    rating: np.ndarray
    ts_seconds: np.ndarray


@dataclass(frozen=True)
class _Users:
    user_id: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    zip_code: np.ndarray


@dataclass(frozen=True)
class _Items:
    item_id: np.ndarray
    genres: pa.Array  # list<string>, one entry per item
    year: np.ndarray


def _read_ratings(path: Path, sep: str, spec: str) -> _Ratings:
    """Ratings in either layout: four integer fields, rating within 1..5."""
    lines = read_lines(path, ENCODING)
    ratings = _Ratings(lines, *parse_int_fields(lines, sep, spec, ("user id", "item id", "rating", "timestamp")))
    out_of_range = (ratings.rating < MIN_RATING) | (ratings.rating > MAX_RATING)
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise lines.error(row, f"rating must be {MIN_RATING}..{MAX_RATING}, got {int(ratings.rating[row])}")
    bad_time = (ratings.ts_seconds < 0) | (ratings.ts_seconds > MAX_TS_SECONDS)
    if bad_time.any():
        row = int(np.argmax(bad_time))
        raise lines.error(row, f"timestamp must be Unix seconds in 0..{MAX_TS_SECONDS}, got {int(ratings.ts_seconds[row])}")
    return ratings


def _make_users(lines: Lines, user_id: np.ndarray, gender: np.ndarray, age: np.ndarray,
                occupation: np.ndarray, zip_code: np.ndarray) -> _Users:
    """Validate the parsed user columns (shared by both layouts) and bundle them."""
    gender = np.char.upper(np.char.strip(gender))
    bad_gender = ~np.isin(gender, GENDERS)
    if bad_gender.any():
        row = int(np.argmax(bad_gender))
        raise lines.error(row, f"gender must be one of {'/'.join(GENDERS)}, got {gender[row]!r}")
    check_unique(lines, user_id, "user id")
    return _Users(
        user_id=user_id,
        gender=gender,
        age=parse_int(lines, age, "age"),
        occupation=np.char.strip(occupation),
        zip_code=np.char.upper(np.char.strip(zip_code)),
    )


def _read_users_100k(path: Path) -> _Users:
    lines = read_lines(path, ENCODING)
    uid, age, gender, occ, zip_code = split_fields(lines, "|", 5, ML100K_USER_SPEC)
    return _make_users(lines, parse_int(lines, uid, "user id"), gender, age, occ, zip_code)


def _read_users_1m(path: Path) -> _Users:
    lines = read_lines(path, ENCODING)
    uid, gender, age, occ, zip_code = split_fields(lines, "::", 5, ML1M_USER_SPEC)
    return _make_users(lines, parse_int(lines, uid, "user id"), gender, age, occ, zip_code)


def _genre_names_100k(folder: Path) -> tuple[str, ...]:
    """Genre names for u.item's flag columns: u.genre ("name|index") if present, else GroupLens' order."""
    path = folder / ML100K_GENRE_FILE
    if not path.is_file():
        return ML100K_DEFAULT_GENRES
    lines = read_lines(path, ENCODING)
    names, index = split_fields(lines, "|", 2, "name|index")
    positions = parse_int(lines, index, "genre index")
    if sorted(positions.tolist()) != list(range(len(positions))):
        raise DataFormatError(
            f"{path.name}: genre indexes must be 0..{len(positions) - 1} once each, got {sorted(positions.tolist())}"
        )
    ordered = [""] * len(positions)
    for name, pos in zip(names.tolist(), positions.tolist()):
        ordered[pos] = name
    return tuple(ordered)


def _years(values: np.ndarray, pattern: re.Pattern[str]) -> np.ndarray:
    """The 4-digit year ``pattern`` finds in each string, `UNKNOWN_YEAR` where there is none."""
    out = np.full(len(values), UNKNOWN_YEAR, dtype=np.int64)
    for i, value in enumerate(values.tolist()):
        match = pattern.search(value)
        if match:
            out[i] = int(match.group(1))
    return out


def _read_items_100k(path: Path, genre_names: tuple[str, ...]) -> _Items:
    """u.item: ids, release-date year and the genre flags turned into genre-name lists."""
    lines = read_lines(path, ENCODING)
    n_fields = ML100K_ITEM_META_FIELDS + len(genre_names)
    columns = split_fields(lines, "|", n_fields, ML100K_ITEM_SPEC)
    item_id = parse_int(lines, columns[0], "item id")
    check_unique(lines, item_id, "item id")
    flags = np.stack(
        [parse_int(lines, col, f"genre flag {name!r}") for name, col in
         zip(genre_names, columns[ML100K_ITEM_META_FIELDS:])],
        axis=1,
    ) if len(item_id) else np.zeros((0, len(genre_names)), dtype=np.int64)
    bad_flag = ~np.isin(flags, (0, 1)).all(axis=1)
    if bad_flag.any():
        raise lines.error(int(np.argmax(bad_flag)), "genre flags must be 0 or 1")
    has_genre = flags.astype(bool)
    names = np.asarray(genre_names, dtype=object)
    genres = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(has_genre.sum(axis=1))]).astype(np.int32)),
        pa.array(np.broadcast_to(names, has_genre.shape)[has_genre].tolist(), type=pa.string()),
    )
    return _Items(item_id, genres, _years(columns[2], _YEAR_AT_END))


def _read_items_1m(path: Path) -> _Items:
    """movies.dat: ids, "(year)" from the end of the title, pipe-separated genres."""
    lines = read_lines(path, ENCODING)
    mid, title, genres = split_fields(lines, "::", 3, ML1M_MOVIE_SPEC)
    item_id = parse_int(lines, mid, "movie id")
    check_unique(lines, item_id, "movie id")
    genre_lists = [[g for g in value.split("|") if g] for value in genres.tolist()]
    return _Items(item_id, pa.array(genre_lists, type=pa.list_(pa.string())), _years(title, _YEAR_IN_TITLE))


# --------------------------------------------------------------------------- assembly


def import_movielens(path: Path, options: MovieLensImport = MovieLensImport()) -> pa.Table:
    """Read the MovieLens folder ``path`` into a time-ordered click-log table.

    Labels follow ``options`` (ratings between the thresholds are dropped). Rows are
    sorted by (ts, user_id, item_id) with a stable sort so a replay sees events in the
    order they happened and ties are broken reproducibly.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "ml-100k":
        rating_file = LAYOUT_FILES["ml-100k"][0]
        ratings = _read_ratings(path / rating_file, "\t", ML100K_RATING_SPEC)
        users = _read_users_100k(path / "u.user")
        items = _read_items_100k(path / "u.item", _genre_names_100k(path))
        user_source, item_source = "u.user", "u.item"
    else:
        rating_file = LAYOUT_FILES["ml-1m"][0]
        ratings = _read_ratings(path / rating_file, "::", ML1M_RATING_SPEC)
        users = _read_users_1m(path / "users.dat")
        items = _read_items_1m(path / "movies.dat")
        user_source, item_source = "users.dat", "movies.dat"

    user_row = lookup(users.user_id, ratings.user_id, ratings.lines, "user id", user_source)
    item_row = lookup(items.item_id, ratings.item_id, ratings.lines, "item id", item_source)

    positive = ratings.rating >= options.positive_min_rating
    negative = ratings.rating <= options.negative_max_rating
    keep = np.flatnonzero(positive | negative)
    ts_ms = ratings.ts_seconds[keep] * MS_PER_SECOND
    user_id, item_id = ratings.user_id[keep], ratings.item_id[keep]
    keep_order = np.lexsort((item_id, user_id, ts_ms))  # last key is primary; stable
    rows = keep[keep_order]

    return _assemble(
        ts_ms=ts_ms[keep_order],
        user_id=user_id[keep_order],
        item_id=item_id[keep_order],
        label=positive[rows].astype(np.int8),
        user_struct=_user_struct(users, options.zip_prefix_len).take(pa.array(user_row[rows])),
        item_struct=_item_struct(items).take(pa.array(item_row[rows])),
    )


def _user_struct(users: _Users, zip_prefix_len: int) -> pa.StructArray:
    """One struct per user (row order of the users file), ready to be gathered per rating."""
    return pa.StructArray.from_arrays(
        [
            pa.array(users.user_id, pa.int64()),
            pa.array(users.gender.tolist(), pa.string()),
            pa.array(users.age, pa.int64()),
            pa.array(users.occupation.tolist(), pa.string()),
            pa.array([z[:zip_prefix_len] for z in users.zip_code.tolist()], pa.string()),
        ],
        fields=list(USER_STRUCT),
    )


def _item_struct(items: _Items) -> pa.StructArray:
    """One struct per item (row order of the items file)."""
    return pa.StructArray.from_arrays(
        [pa.array(items.item_id, pa.int64()), items.genres, pa.array(items.year, pa.int64())],
        fields=list(ITEM_STRUCT),
    )


def _assemble(*, ts_ms: np.ndarray, user_id: np.ndarray, item_id: np.ndarray, label: np.ndarray,
              user_struct: pa.Array, item_struct: pa.Array) -> pa.Table:
    """Build the click-log table; event ids are "ml-{user}-{item}-{ts}", unique per rating."""
    ts_arr = pa.array(ts_ms, pa.int64())
    user_arr = pa.array(user_id, pa.int64())
    item_arr = pa.array(item_id, pa.int64())
    event_id = pc.binary_join_element_wise(
        pa.array(["ml"] * len(ts_ms), pa.string()),
        pc.cast(user_arr, pa.string()),
        pc.cast(item_arr, pa.string()),
        pc.cast(ts_arr, pa.string()),
        "-",
    )
    return pa.Table.from_arrays(
        [event_id, ts_arr, user_arr, item_arr, pa.array(label, pa.int8()), user_struct, item_struct],
        schema=MOVIELENS_SCHEMA,
    )
