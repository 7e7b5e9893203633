"""The MovieLens importer: real ML-100K, hand-written ML-1M files, and its error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stream.clicklog import ClickLogError, read_click_log, write_click_log
from stream.movielens import DataFormatError, MovieLensImport, detect_layout, import_movielens


USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072-1234\n3::M::25::15::t8h1n\n"
MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "73::Misérables, Les (1995)::Drama|Musical\n"
    "99::Untitled::Documentary\n"
)
# user, movie, rating, seconds: deliberately not in time order.
RATINGS_DAT = (
    "2::73::2::978300760\n"
    "1::1::5::978300100\n"
    "3::99::3::978300200\n"  # rating 3: dropped by the default rule
    "1::73::4::978300100\n"  # same second as line 2: tie broken by item id
    "3::1::1::978300050\n"
)


def write_ml1m(folder: Path, ratings: str = RATINGS_DAT, users: str = USERS_DAT, movies: str = MOVIES_DAT) -> Path:
    """Write a tiny ML-1M layout, Latin-1 encoded like GroupLens' files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("ratings.dat", ratings), ("users.dat", users), ("movies.dat", movies)):
        (folder / name).write_text(text, encoding="latin-1")
    return folder


# --------------------------------------------------------------------------- real ML-100K


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path) -> pa.Table:
    return import_movielens(ml100k_dir)


@pytest.fixture(scope="module")
def u_data(ml100k_dir: Path) -> np.ndarray:
    """u.data as an (n, 4) int array: user, item, rating, seconds."""
    return np.loadtxt(ml100k_dir / "u.data", dtype=np.int64, delimiter="\t")


def test_ml100k_layout_detected(ml100k_dir: Path) -> None:
    assert detect_layout(ml100k_dir) == "ml-100k"


def test_ml100k_row_count_drops_rating_3(ml100k: pa.Table, u_data: np.ndarray) -> None:
    ratings = u_data
    assert ml100k.num_rows == int((ratings[:, 2] != 3).sum())


def test_ml100k_is_time_ordered_with_ms_timestamps(ml100k: pa.Table, u_data: np.ndarray) -> None:
    ts = ml100k.column("ts").to_numpy()
    assert (np.diff(ts) >= 0).all()
    assert (ts % 1000 == 0).all()
    assert ts.min() == u_data[:, 3].min() * 1000


def test_ml100k_labels_follow_the_rule(ml100k: pa.Table, u_data: np.ndarray) -> None:
    ratings = u_data
    rating_of = {(u, i, t * 1000): r for u, i, r, t in ratings[:: len(ratings) // 50].tolist()}
    rows = ml100k.select(["user_id", "item_id", "ts", "label"]).to_pylist()
    checked = 0
    for row in rows:
        rating = rating_of.get((row["user_id"], row["item_id"], row["ts"]))
        if rating is not None:
            assert row["label"] == (1 if rating >= 4 else 0), (row, rating)
            checked += 1
    expected = sum(1 for r in rating_of.values() if r != 3)
    assert checked == expected > 20


def test_ml100k_structs_and_types(ml100k: pa.Table) -> None:
    schema = ml100k.schema
    assert schema.field("event_id").type == pa.string()
    assert schema.field("label").type == pa.int8()
    user, item = schema.field("user").type, schema.field("item").type
    assert {user.field(i).name: user.field(i).type for i in range(user.num_fields)} == {
        "user_id": pa.int64(), "gender": pa.string(), "age": pa.int64(),
        "occupation": pa.string(), "zip_prefix": pa.string(),
    }
    assert {item.field(i).name: item.field(i).type for i in range(item.num_fields)} == {
        "item_id": pa.int64(), "genres": pa.list_(pa.string()), "year": pa.int64(),
    }
    genres = pc.struct_field(ml100k.column("item"), "genres")
    assert pc.min(pc.list_value_length(genres)).as_py() >= 1
    first = ml100k.slice(0, 1).to_pylist()[0]
    assert first["event_id"] == f"ml-{first['user_id']}-{first['item_id']}-{first['ts']}"
    assert first["user"]["user_id"] == first["user_id"] and first["item"]["item_id"] == first["item_id"]
    assert set(pc.unique(pc.struct_field(ml100k.column("user"), "gender")).to_pylist()) == {"M", "F"}
    assert "technician" in pc.unique(pc.struct_field(ml100k.column("user"), "occupation")).to_pylist()
    assert len(pc.utf8_length(pc.struct_field(ml100k.column("user"), "zip_prefix")).unique()) == 1


def test_ml100k_known_item(ml100k: pa.Table) -> None:
    """Toy Story (id 1): 01-Jan-1995, Animation|Children's|Comedy in u.item's flags."""
    rows = ml100k.filter(pc.equal(ml100k.column("item_id"), 1)).slice(0, 1).to_pylist()
    assert rows[0]["item"] == {"item_id": 1, "genres": ["Animation", "Children's", "Comedy"], "year": 1995}


def test_ml100k_round_trips_through_parquet(ml100k: pa.Table, tmp_path: Path) -> None:
    path = write_click_log(ml100k, tmp_path / "ml100k.parquet")
    assert read_click_log(path).equals(ml100k)


# --------------------------------------------------------------------------- ML-1M on small files


def test_ml1m_small_files(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    assert detect_layout(folder) == "ml-1m"
    table = import_movielens(folder)
    rows = table.to_pylist()
    assert [(r["ts"], r["user_id"], r["item_id"], r["label"]) for r in rows] == [
        (978300050_000, 3, 1, 0),
        (978300100_000, 1, 1, 1),
        (978300100_000, 1, 73, 1),
        (978300760_000, 2, 73, 0),
    ]
    assert rows[0]["event_id"] == "ml-3-1-978300050000"
    by_item = {r["item_id"]: r["item"] for r in rows}
    assert by_item[73] == {"item_id": 73, "genres": ["Drama", "Musical"], "year": 1995}
    assert by_item[1]["genres"] == ["Animation", "Children's", "Comedy"]
    by_user = {r["user_id"]: r["user"] for r in rows}
    assert by_user[1] == {"user_id": 1, "gender": "F", "age": 1, "occupation": "10", "zip_prefix": "48"}
    assert by_user[3]["zip_prefix"] == "T8"  # uppercased


def test_ml1m_unknown_year_is_zero(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, ratings="1::99::5::978300100\n")
    assert import_movielens(folder).to_pylist()[0]["item"]["year"] == 0


def test_custom_thresholds_change_labels(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path)
    table = import_movielens(folder, MovieLensImport(positive_min_rating=5, negative_max_rating=3))
    labels = {(r["user_id"], r["item_id"]): r["label"] for r in table.to_pylist()}
    # 5 -> 1; 2, 3, 1 -> 0; 4 -> dropped.
    assert labels == {(1, 1): 1, (2, 73): 0, (3, 99): 0, (3, 1): 0}


def test_zip_prefix_length(tmp_path: Path) -> None:
    table = import_movielens(write_ml1m(tmp_path), MovieLensImport(zip_prefix_len=3))
    assert {r["user"]["zip_prefix"] for r in table.to_pylist()} == {"480", "700", "T8H"}


def test_overlapping_thresholds_rejected() -> None:
    with pytest.raises(ValueError, match="negative_max_rating"):
        MovieLensImport(positive_min_rating=3, negative_max_rating=3)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("file", "text", "line", "fragment"),
    [
        ("ratings.dat", "1::1::5::978300100\n1::73::5\n", 2, "expected 4 fields 'UserID::MovieID::Rating::Timestamp', got 3"),
        ("ratings.dat", "1::1::5::978300100\n\n1::x::4::978300100\n", 3, "item id must be an integer, got 'x'"),
        ("ratings.dat", "1::1::5::978300100\n1::73::2.5::978300100\n", 2, "rating must be an integer"),
        ("ratings.dat", "1::1::6::978300100\n", 1, "rating must be 1..5, got 6"),
        ("ratings.dat", "1::1::5::-5\n", 1, "timestamp must be Unix seconds"),
        ("ratings.dat", "1::1::5::978300100\n7::1::5::978300100\n", 2, "user id 7 is not in users.dat"),
        ("ratings.dat", "1::1::5::978300100\n1::2::5::978300100\n", 2, "item id 2 is not in movies.dat"),
        ("users.dat", USERS_DAT + "4::X::1::10::48067\n", 4, "gender must be one of M/F"),
        ("users.dat", USERS_DAT + "1::M::1::10::48067\n", 4, "duplicate user id 1"),
        ("movies.dat", MOVIES_DAT + "5::Heat (1995)\n", 4, "expected 3 fields"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, file: str, text: str, line: int, fragment: str) -> None:
    folder = write_ml1m(tmp_path, **{file.removesuffix(".dat"): text})
    with pytest.raises(DataFormatError) as caught:
        import_movielens(folder)
    message = str(caught.value)
    assert message.startswith(f"{file} line {line}: "), message
    assert fragment in message
    assert "\n" not in message
    assert isinstance(caught.value, ClickLogError)


def test_non_ascii_title_needs_latin1(tmp_path: Path) -> None:
    """The files are Latin-1: the é byte (0xE9) is not valid UTF-8 and must still import."""
    folder = write_ml1m(tmp_path)
    assert b"\xe9" in (folder / "movies.dat").read_bytes()
    assert import_movielens(folder).num_rows == 4


def test_missing_ratings_file_is_named(tmp_path: Path) -> None:
    partial = write_ml1m(tmp_path / "ml-1m")
    (partial / "ratings.dat").unlink()  # users.dat and movies.dat only, as a partial copy has
    with pytest.raises(DataFormatError, match="ML-1M layout is missing ratings.dat") as caught:
        import_movielens(partial)
    assert str(partial) in str(caught.value)


def test_missing_files_listed_per_layout(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t1\t5\t874724710\n")
    (tmp_path / "users.dat").write_text(USERS_DAT)
    with pytest.raises(DataFormatError) as caught:
        detect_layout(tmp_path)
    message = str(caught.value)
    assert "ML-100K layout is missing u.user, u.item" in message
    assert "ML-1M layout is missing ratings.dat, movies.dat" in message


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such directory"):
        detect_layout(tmp_path / "absent")
    (tmp_path / "ml-100k.zip").write_bytes(b"PK")
    with pytest.raises(DataFormatError, match="unzip"):
        detect_layout(tmp_path / "ml-100k.zip")


def test_ml100k_layout_on_small_files(tmp_path: Path) -> None:
    """ML-100K parsing without u.genre: the standard genre order applies; a release date with a one-digit day parses."""
    flags = ["0"] * 19
    flags[1] = flags[16] = "1"  # Action, Thriller
    (tmp_path / "u.data").write_text("1\t5\t4\t874724710\n1\t5\t3\t874724711\n", encoding="latin-1")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n", encoding="latin-1")
    (tmp_path / "u.item").write_text(f"5|Copycat (1995)|4-Feb-1971||http://x|{'|'.join(flags)}\n", encoding="latin-1")
    rows = import_movielens(tmp_path).to_pylist()
    assert len(rows) == 1
    assert rows[0]["user"] == {"user_id": 1, "gender": "M", "age": 24, "occupation": "technician", "zip_prefix": "85"}
    assert rows[0]["item"] == {"item_id": 5, "genres": ["Action", "Thriller"], "year": 1971}


def test_ml100k_bad_item_line(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t5\t4\t874724710\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.item").write_text("5|Copycat (1995)|01-Jan-1995||http://x|0|1\n")
    with pytest.raises(DataFormatError, match=r"^u.item line 1: expected 24 fields"):
        import_movielens(tmp_path)
