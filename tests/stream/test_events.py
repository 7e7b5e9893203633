"""Event schema: building it, its fixed Arrow schema, and the stream config beside it."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from stream.clicklog import IDENTITY_COLUMNS
from stream.config import StreamConfig, kafka_client_options
from stream.events import EventField, EventSchema
from stream.synthetic import SYNTHETIC_SCHEMA


def test_arrow_schema_has_identity_columns_and_typed_structs() -> None:
    schema = EventSchema.of(
        [("segment", "categorical", "user"), ("tags", "multi_categorical", "item"), ("price", "numeric", "item")]
    )
    arrow = schema.arrow_schema()
    assert arrow.names == [*IDENTITY_COLUMNS, "item_key", "user", "item"]
    assert arrow.field("item_key").type == pa.string()  # the caller's item id where it is not the index id
    assert arrow.field("user").type == pa.struct([("segment", pa.string())])
    assert arrow.field("item").type == pa.struct([("tags", pa.list_(pa.string())), ("price", pa.float64())])


def test_context_column_only_if_used() -> None:
    schema = EventSchema((EventField("hour", "numeric", "context"),))
    assert schema.arrow_schema().names[-3:] == ["user", "item", "context"]
    assert schema.arrow_schema().field("user").type == pa.struct([])


def test_invalid_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        EventField("x", "text", "user")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown struct"):
        EventField("x", "numeric", "session")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="declared twice"):
        EventSchema.of([("x", "numeric", "user"), ("x", "categorical", "user")])
    EventSchema.of([("x", "numeric", "user"), ("x", "categorical", "item")])  # same name, other struct: fine


def test_infer_from_the_synthetic_schema() -> None:
    schema = EventSchema.infer(SYNTHETIC_SCHEMA)
    kinds = {(f.struct, f.name): f.kind for f in schema.fields}
    assert kinds[("user", "age_bucket")] == "categorical"
    assert kinds[("item", "tags")] == "multi_categorical"
    assert kinds[("item", "price")] == "numeric"


def test_stream_config_defaults_and_client_options() -> None:
    config = StreamConfig()
    assert config.assignment == "group" and config.max_batch_events == 2048
    assert kafka_client_options(config) == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "request_timeout_ms": 30000,
        "security_protocol": "PLAINTEXT",
    }
    secure = dataclasses.replace(config, security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_username="u")
    options = kafka_client_options(secure)
    assert options["sasl_mechanism"] == "PLAIN" and options["sasl_plain_username"] == "u"
    assert "sasl_plain_password" not in options and "ssl_cafile" not in options


def test_stream_config_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        StreamConfig(session_timeout_ms=2000, heartbeat_interval_ms=2000)
    with pytest.raises(ValueError, match="dead_letter_topic"):
        StreamConfig(dead_letter_topic="clicks")
    StreamConfig(session_timeout_ms=2000, heartbeat_interval_ms=500)


def test_stream_config_loads_through_the_app_loader() -> None:
    from inttower.config import config_from_dict  # the application's loader; stream/ itself never imports it

    config = config_from_dict(
        StreamConfig,
        {"bootstrap_servers": ["a:9092", "b:9092"], "assignment": "static", "max_batch_events": 512, "sasl_mechanism": "PLAIN"},
        source="test",
    )
    assert config.bootstrap_servers == ("a:9092", "b:9092") and config.assignment == "static"
    with pytest.raises(Exception, match="max_batch_events"):
        config_from_dict(StreamConfig, {"max_batch_events": 0}, source="test")
