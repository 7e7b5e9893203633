"""The table importer: CSV, Parquet and JSON lines in the user's schema -> the click-log contract."""

from __future__ import annotations

import gzip
import json
import os
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inttower.config import config_from_dict
from inttower.errors import ConfigError
from model.config import ModelConfig
from model.features import FeatureEncoder
from stream.clicklog import ClickLogError, validate_schema, with_index_ids
from stream.table_import import TableImport, TableImportError, import_table

REPO_ROOT = Path(__file__).resolve().parents[2]
AVAZU_CONFIG = REPO_ROOT / "configs" / "avazu.toml"


def ms(*args: int) -> int:
    """Milliseconds since the epoch of a UTC wall-clock time."""
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def options(**overrides: object) -> TableImport:
    base: dict[str, object] = {"user_fields": ("user_id",), "item_fields": ("item_id",)}
    return TableImport(**{**base, **overrides})


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SIMPLE_CSV = "ts,user_id,item_id,label\n3,u1,i1,1\n1,u2,i2,0\n3,u3,i3,0\n2,u1,i2,1\n"


# --------------------------------------------------------------------------- contract and order


def test_csv_import_follows_the_contract_in_stable_event_time_order(tmp_path: Path) -> None:
    table = import_table(write_csv(tmp_path / "clicks.csv", SIMPLE_CSV), options())
    validate_schema(table.schema, "imported")
    assert table.column("ts").to_pylist() == [1, 2, 3, 3]
    # ties (ts 3) keep file order; derived event ids are "<stem>:<data row>"
    assert table.column("event_id").to_pylist() == ["clicks:2", "clicks:4", "clicks:1", "clicks:3"]
    assert table.column("label").to_pylist() == [0, 1, 1, 0]
    assert table.schema.field("label").type == pa.int8()


def test_derived_event_ids_drop_format_and_compression_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "day1.csv.gz"
    path.write_bytes(gzip.compress(SIMPLE_CSV.encode()))
    table = import_table(path, options())
    assert sorted(table.column("event_id").to_pylist()) == ["day1:1", "day1:2", "day1:3", "day1:4"]


def test_tsv_files_default_to_tab_delimiter(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "clicks.tsv", SIMPLE_CSV.replace(",", "\t"))
    assert import_table(path, options()).num_rows == 4


# --------------------------------------------------------------------------- time formats


def test_epoch_seconds_become_milliseconds(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "t,user_id,item_id,label\n1413849600,u,i,1\n1413849600.5,u,i,0\n")
    table = import_table(path, options(time_column="t", time_format="epoch_s"))
    assert table.column("ts").to_pylist() == [1413849600000, 1413849600500]


def test_epoch_milliseconds_from_parquet_integers(tmp_path: Path) -> None:
    path = tmp_path / "ms.parquet"
    pq.write_table(pa.table({"ts": [1413849600123, 5], "user_id": [1, 2], "item_id": [3, 4], "label": [1, 0]}), path)
    table = import_table(path, options())
    assert table.column("ts").to_pylist() == [5, 1413849600123]


def test_iso8601_with_and_without_zone_offsets_is_utc(tmp_path: Path) -> None:
    rows = [
        {"when": "2014-10-21T02:00:00+02:00", "user_id": "a", "item_id": "x", "label": 1},
        {"when": "2014-10-21 01:00:00", "user_id": "b", "item_id": "y", "label": 0},
        {"when": "2014-10-21T00:30:00.250Z", "user_id": "c", "item_id": "z", "label": 0},
        {"when": "2014-10-20", "user_id": "d", "item_id": "z", "label": 0},
    ]
    table = import_table(write_jsonl(tmp_path / "iso.jsonl", rows), options(time_column="when", time_format="iso8601"))
    assert table.column("ts").to_pylist() == [
        ms(2014, 10, 20), ms(2014, 10, 21, 0, 0), ms(2014, 10, 21, 0, 30) + 250, ms(2014, 10, 21, 1),
    ]
    assert table.column("user_id").to_pylist() == ["d", "a", "c", "b"]


def test_iso8601_with_microseconds_as_python_writes_them(tmp_path: Path) -> None:
    rows = [
        {"when": "2014-10-21T00:00:00.123456", "user_id": "a", "item_id": "x", "label": 1},
        {"when": "2014-10-21T02:00:00.999999+02:00", "user_id": "b", "item_id": "y", "label": 0},
    ]
    table = import_table(write_jsonl(tmp_path / "us.jsonl", rows), options(time_column="when", time_format="iso8601"))
    assert table.column("ts").to_pylist() == [ms(2014, 10, 21) + 123, ms(2014, 10, 21) + 999]  # truncated to ms


def test_strptime_format_reads_avazu_hours(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "hours.csv", "hour,user_id,item_id,label\n14102101,u,i,0\n14102100,u,i,1\n")
    table = import_table(path, options(time_column="hour", time_format="%y%m%d%H"))
    assert table.column("ts").to_pylist() == [ms(2014, 10, 21, 0), ms(2014, 10, 21, 1)]


def test_strptime_format_reads_integer_hours_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "hours.parquet"
    pq.write_table(pa.table({"hour": [14102123], "user_id": ["u"], "item_id": ["i"], "label": [0]}), path)
    table = import_table(path, options(time_column="hour", time_format="%y%m%d%H"))
    assert table.column("ts").to_pylist() == [ms(2014, 10, 21, 23)]


def test_parquet_timestamp_columns_are_used_as_they_are(tmp_path: Path) -> None:
    when = datetime(2014, 10, 21, 5, tzinfo=timezone.utc)
    path = tmp_path / "stamps.parquet"
    stamps = pa.array([when], pa.timestamp("us", "UTC"))
    pq.write_table(pa.table({"at": stamps, "user_id": ["u"], "item_id": ["i"], "label": [True]}), path)
    table = import_table(path, options(time_column="at"))  # time_format is ignored for timestamps
    assert table.column("ts").to_pylist() == [ms(2014, 10, 21, 5)]


# --------------------------------------------------------------------------- labels


def test_boolean_and_textual_labels(tmp_path: Path) -> None:
    rows = [{"ts": i, "user_id": "u", "item_id": "i", "label": v} for i, v in enumerate([True, False, True])]
    assert import_table(write_jsonl(tmp_path / "b.jsonl", rows), options()).column("label").to_pylist() == [1, 0, 1]
    path = write_csv(tmp_path / "t.csv", "ts,user_id,item_id,clicked\n1,u,i,true\n2,u,i,FALSE\n3,u,i, 1\n")
    assert import_table(path, options(label_column="clicked")).column("label").to_pylist() == [1, 0, 1]


def test_rating_thresholds_label_and_drop_the_middle(tmp_path: Path) -> None:
    text = "ts,user_id,item_id,stars\n1,u,i,5\n2,u,i,3\n3,u,i,1\n4,u,i,4.5\n5,u,i,2\n6,u,i,3.5\n"
    # no label column in the file: ratings give the labels
    table = import_table(write_csv(tmp_path / "r.csv", text), options(rating_column="stars"))
    assert table.column("ts").to_pylist() == [1, 3, 4, 5]
    assert table.column("label").to_pylist() == [1, 0, 1, 0]


def test_rating_thresholds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative_max_rating"):
        TableImport(rating_column="r", positive_min_rating=3, negative_max_rating=3)


# --------------------------------------------------------------------------- ids and structs


def test_string_ids_stay_strings_even_when_they_look_numeric(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "ts,user_id,item_id,label\n1,042,1fbe01fe,1\n2,7,15706,0\n")
    table = import_table(path, options())
    assert table.schema.field("user_id").type == pa.string()
    assert table.column("user_id").to_pylist() == ["042", "7"]
    assert table.column("item_id").to_pylist() == ["1fbe01fe", "15706"]


def test_integer_ids_stay_integers(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table({"ts": [1, 2], "user_id": pa.array([7, 8], pa.int32()), "item_id": [10, 11], "label": [0, 1]}), path)
    table = import_table(path, options())
    assert pa.types.is_integer(table.schema.field("user_id").type)
    assert table.column("user_id").to_pylist() == [7, 8]
    assert with_index_ids(table).column("item_id").to_pylist() == [10, 11]


def test_large_event_ids_are_kept_as_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "e.csv", "id,ts,user_id,item_id,label\n10000169349117863715,1,u,i,0\n00042,2,u,i,1\n")
    table = import_table(path, options(event_id_column="id"))
    assert table.column("event_id").to_pylist() == ["10000169349117863715", "00042"]


def test_structs_take_listed_columns_with_renames_and_drop_the_rest(tmp_path: Path) -> None:
    text = (
        "ts,uid,iid,label,age,gender,price,cat,site,unused\n"
        "1,u1,i1,1,31,F,9.5,shoes,s1,x\n"
        "2,u2,i2,0,,M,,bags,s2,y\n"
    )
    opts = TableImport(
        user_id_column="uid", item_id_column="iid",
        user_fields=("uid:user_id", "age", "gender:sex"),
        item_fields=("iid:item_id", "price", "cat:category"),
        context_fields=("site",),
        numeric=("price",),
    )
    table = import_table(write_csv(tmp_path / "s.csv", text), opts)
    assert table.column_names == ["event_id", "ts", "user_id", "item_id", "label", "user", "item", "context"]
    assert table.schema.field("user").type == pa.struct([("user_id", pa.string()), ("age", pa.string()), ("sex", pa.string())])
    assert table.schema.field("item").type == pa.struct([("item_id", pa.string()), ("price", pa.float64()), ("category", pa.string())])
    assert table.column("user").to_pylist() == [
        {"user_id": "u1", "age": "31", "sex": "F"}, {"user_id": "u2", "age": None, "sex": "M"}
    ]
    assert table.column("item").to_pylist()[1] == {"item_id": "i2", "price": None, "category": "bags"}
    assert table.column("context").to_pylist() == [{"site": "s1"}, {"site": "s2"}]


def test_context_is_written_only_when_listed(tmp_path: Path) -> None:
    table = import_table(write_csv(tmp_path / "c.csv", SIMPLE_CSV), options())
    assert "context" not in table.column_names


def test_options_reject_bad_field_lists() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        TableImport(user_fields=("a", "b:a"))
    with pytest.raises(ValueError, match="numeric: price"):
        TableImport(item_fields=("cost",), numeric=("price",))
    with pytest.raises(ValueError, match="time_format"):
        TableImport(time_format="seconds")
    with pytest.raises(ValueError, match="delimiter"):
        TableImport(delimiter="::")


# --------------------------------------------------------------------------- errors


def error_of(path: Path, opts: TableImport) -> str:
    with pytest.raises(TableImportError) as caught:
        import_table(path, opts)
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, ClickLogError) and isinstance(caught.value, ValueError)
    return message


def test_missing_column_names_file_column_and_option(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "m.csv", SIMPLE_CSV), options(item_id_column="ad_id"))
    assert "m.csv" in message and "'ad_id'" in message and "item_id_column" in message
    assert "the file has: ts, user_id, item_id, label" in message


def test_missing_struct_column_is_named(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "m.csv", SIMPLE_CSV), options(user_fields=("age:years",)))
    assert "missing column 'age'" in message and "user_fields" in message


def test_bad_time_names_line_row_column_and_value(tmp_path: Path) -> None:
    text = "ts,user_id,item_id,label\n1,u,i,0\n\n2,u,i,1\n2014-10-21,u,i,0\n"  # the blank line is skipped
    message = error_of(write_csv(tmp_path / "t.csv", text), options(time_format="epoch_s"))
    assert "t.csv line 5 (row 3), column 'ts'" in message and "'2014-10-21'" in message


def test_bad_strptime_time_is_named(tmp_path: Path) -> None:
    text = "hour,user_id,item_id,label\n14102100,u,i,0\n1410x100,u,i,1\n"
    message = error_of(write_csv(tmp_path / "h.csv", text), options(time_column="hour", time_format="%y%m%d%H"))
    assert "h.csv line 3 (row 2), column 'hour'" in message and "'1410x100'" in message and "%y%m%d%H" in message


def test_bad_iso_time_in_json_lines_is_named(tmp_path: Path) -> None:
    rows = [{"ts": "2014-10-21T00:00:00Z", "user_id": "u", "item_id": "i", "label": 0},
            {"ts": "yesterday", "user_id": "u", "item_id": "i", "label": 0}]
    message = error_of(write_jsonl(tmp_path / "t.jsonl", rows), options(time_format="iso8601"))
    assert "t.jsonl line 2 (row 2), column 'ts'" in message and "'yesterday'" in message


def test_missing_time_is_named(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "t.csv", "ts,user_id,item_id,label\n1,u,i,0\n,u,i,1\n"), options())
    assert "t.csv line 3 (row 2), column 'ts': missing event time" in message


def test_bad_label_names_row_and_value(tmp_path: Path) -> None:
    text = "ts,user_id,item_id,label\n1,u,i,0\n2,u,i,2\n"
    message = error_of(write_csv(tmp_path / "l.csv", text), options())
    assert "l.csv line 3 (row 2), column 'label'" in message and "'2'" in message


def test_bad_label_in_parquet_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"ts": [1, 2, 3], "user_id": ["u"] * 3, "item_id": ["i"] * 3, "label": [0, 1, 5]}), path)
    message = error_of(path, options())
    assert "l.parquet row 3, column 'label'" in message and "5" in message


def test_bad_rating_and_numeric_values_are_named(tmp_path: Path) -> None:
    text = "ts,user_id,item_id,stars,price\n1,u,i,4,1.0\n2,u,i,five,2.0\n"
    message = error_of(write_csv(tmp_path / "r.csv", text), options(rating_column="stars"))
    assert "r.csv line 3 (row 2), column 'stars'" in message and "'five'" in message
    text = "ts,user_id,item_id,label,price\n1,u,i,1,1.0\n2,u,i,0,cheap\n"
    message = error_of(write_csv(tmp_path / "n.csv", text), options(item_fields=("item_id", "price"), numeric=("price",)))
    assert "n.csv line 3 (row 2), column 'price'" in message and "'cheap'" in message


def test_null_id_is_named(tmp_path: Path) -> None:
    text = "ts,user_id,item_id,label\n1,u,i,0\n2,u,,1\n"
    message = error_of(write_csv(tmp_path / "n.csv", text), options())
    assert "n.csv line 3 (row 2), column 'item_id': missing item id" in message
    rows = [{"ts": 1, "user_id": None, "item_id": "i", "label": 0}]
    message = error_of(write_jsonl(tmp_path / "n.jsonl", rows), options())
    assert "n.jsonl line 1 (row 1), column 'user_id': missing user id" in message


def test_repeated_event_id_names_both_rows(tmp_path: Path) -> None:
    text = "id,ts,user_id,item_id,label\na,1,u,i,0\nb,2,u,i,1\na,3,u,i,0\n"
    message = error_of(write_csv(tmp_path / "d.csv", text), options(event_id_column="id"))
    assert "d.csv line 4 (row 3), column 'id'" in message and "line 2 (row 1)" in message


def test_empty_files_are_reported(tmp_path: Path) -> None:
    for name in ("e.csv", "e.jsonl", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        message = error_of(tmp_path / name, options())
        assert name in message and "empty" in message
    message = error_of(write_csv(tmp_path / "h.csv", "ts,user_id,item_id,label\n"), options())
    assert "h.csv" in message and "no data rows" in message
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({"ts": pa.array([], pa.int64()), "user_id": pa.array([], pa.string()),
                             "item_id": pa.array([], pa.string()), "label": pa.array([], pa.int8())}), path)
    assert "no data rows" in error_of(path, options())


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "clicks.log", SIMPLE_CSV), options())
    assert "clicks.log" in message and "format" in message
    assert import_table(tmp_path / "clicks.log", options(format="csv")).num_rows == 4
    assert "no such file" in error_of(tmp_path / "absent.csv", options())


def test_empty_tower_field_list_is_reported(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "c.csv", SIMPLE_CSV), TableImport(user_fields=("user_id",)))
    assert "item_fields is empty" in message


def test_malformed_csv_is_one_line(tmp_path: Path) -> None:
    message = error_of(write_csv(tmp_path / "bad.csv", "ts,user_id,item_id,label\n1,u,i\n"), options())
    assert "bad.csv" in message and "not readable as csv" in message


# --------------------------------------------------------------------------- the shipped Avazu config


def avazu_options() -> tuple[TableImport, ModelConfig]:
    raw = tomllib.loads(AVAZU_CONFIG.read_text(encoding="utf-8"))
    table = config_from_dict(TableImport, raw["data"]["table"], source=str(AVAZU_CONFIG), key_path="data.table")
    model = config_from_dict(ModelConfig, raw["model"], source=str(AVAZU_CONFIG), key_path="model")
    return table, model


def test_avazu_config_loads_and_its_features_are_imported_fields() -> None:
    table, model = avazu_options()
    written = {struct: {spec.rpartition(":")[2] for spec in specs} for struct, specs in table.structs().items()}
    for f in model.features:
        struct = "context" if f.source == "context" else f.tower
        assert f.name in written.get(struct, set()), f"{f.name} is not written to the {struct} struct"


def test_table_options_report_bad_toml_values_with_their_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.table\.format"):
        config_from_dict(TableImport, {"format": "xlsx"}, source="c.toml", key_path="data.table")


def test_real_avazu_sample_imports_and_encodes() -> None:
    root = os.environ.get("INTTOWER_DATA")
    path = Path(root) / "avazu-sample" / "avazu_sample.txt" if root else None
    if path is None or not path.is_file():
        pytest.skip("set INTTOWER_DATA to a folder holding avazu-sample/avazu_sample.txt")
    options_, model = avazu_options()
    table = import_table(path, options_)
    validate_schema(table.schema, str(path))
    assert table.num_rows == 100
    assert sum(table.column("label").to_pylist()) == 20
    assert table.column("ts").to_pylist()[0] == ms(2014, 10, 21, 0)
    assert table.schema.field("user_id").type == pa.string()  # hex device_ip
    assert table.column("event_id").to_pylist()[1] == "10000169349117863715"  # beyond int64
    batch = FeatureEncoder(model.features).encode(with_index_ids(table))
    assert len(batch) == 100 and set(batch.item.categorical) == {f"C{i}" for i in range(14, 22)}
