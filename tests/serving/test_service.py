"""`inttower serve` over real index versions on disk: answers, refusals, version swaps, metrics."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from index_sync.index import LiveIndex
from index_sync.serving import ServingSnapshot
from index_sync.snapshot_files import SnapshotWriter
from index_sync.sync import item_vector_shape
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder
from serving.app import ServingService
from serving.config import ServingConfig
from tests.serving.service_thread import ServiceThread
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

MODEL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
LOG = generate_synthetic_log(SyntheticLogConfig(events=3_000, seed=21, users=200, initial_items=300))
CONFIG = ServingConfig(max_candidates=500, max_k=50, max_body_bytes=64 * 1024, poll_interval_s=3600.0)


def _publish(writer: SnapshotWriter, live: LiveIndex, seed: int) -> int:
    """A new model (weights from ``seed``) and every item of the log encoded by it, as the next version."""
    torch.manual_seed(seed)
    model = build_model(MODEL).eval()
    ids, first = np.unique(LOG.column("item_id").to_numpy(), return_index=True)
    items = LOG.take(first)  # each item's features, from its first event
    with torch.no_grad():
        vectors = model.encode_items(FeatureEncoder(MODEL.features).encode_tower(items, "item")).float().numpy()
    version = live.publish_full(ids, vectors)
    writer.write(ServingSnapshot(version, model))
    return version.version


def new_live_index() -> LiveIndex:
    """An empty index of the shape MODEL's item vectors have (each head's p, plus 2 for the per-side scalars)."""
    return LiveIndex(*item_vector_shape(build_model(MODEL), FeatureEncoder(MODEL.features), LOG.slice(0, 1)))


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ServiceThread, SnapshotWriter, LiveIndex]]:
    writer, live = SnapshotWriter(tmp_path, keep=5), new_live_index()
    service = ServingService(MODEL, tmp_path, CONFIG)
    server = ServiceThread(service)
    try:
        yield server, writer, live
    finally:
        server.stop()
        service.close()


def _user(row: int = 0) -> dict:
    return LOG.column("user")[row].as_py()


ITEMS = [int(i) for i in np.unique(LOG.column("item_id").to_numpy())[:40]]


def test_no_index_yet_is_503_then_answers_name_their_version(served) -> None:
    server, writer, live = served
    status, body = server.request("/healthz")
    assert status == 503 and body["status"] == "no_index"
    assert server.request("/score", {"user": _user(), "candidates": ITEMS})[0] == 503
    _publish(writer, live, seed=1)
    assert server.service.index.maybe_reload()
    status, body = server.request("/healthz")
    assert status == 200 and body["version"] == 1 and body["items"] > 0 and body["index_age_s"] >= 0
    status, body = server.request("/score", {"user": _user(), "candidates": ITEMS})
    assert status == 200 and body["version"] == 1 and body["items"] == ITEMS and body["unknown"] == []
    assert all(0.0 < p < 1.0 for p in body["scores"])
    status, top = server.request("/retrieve", {"user": _user(), "k": 10})
    assert status == 200 and top["version"] == 1 and len(top["items"]) == 10
    assert top["scores"] == sorted(top["scores"], reverse=True)


@pytest.mark.parametrize(("body", "raw", "status", "error"), [
    (None, b"{not json", 400, "malformed_json"),
    (None, b"[1, 2]", 400, "malformed_json"),
    ({"user": {}, "candidates": [1], "extra": 1}, None, 400, "unknown_field"),
    ({"user": {"no_such_feature": 1}, "candidates": [1]}, None, 400, "unknown_field"),
    ({"user": {}}, None, 400, "missing_field"),
    ({"user": {}, "candidates": []}, None, 400, "wrong_type"),
    ({"user": {}, "candidates": [1.5]}, None, 400, "wrong_type"),
    ({"user": {}, "candidates": list(range(501))}, None, 413, "too_many_candidates"),
    ({"user": {}, "candidates": [123456789]}, None, 422, "unknown_items"),
    (None, b'{"user": {}, "candidates": [' + b"1," * 40_000 + b"1]}", 413, "body_too_large"),
])
def test_bad_score_requests_get_a_4xx_with_a_one_line_reason(served, body, raw, status, error) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    got, answer = server.request("/score", body, raw)
    assert got == status and answer["error"] == error, answer
    assert "\n" not in answer["reason"] and answer["reason"]


@pytest.mark.parametrize("k", [0, 51, -1, "ten", True])
def test_out_of_range_k_is_refused(served, k) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    status, answer = server.request("/retrieve", {"user": _user(), "k": k})
    assert status == 400 and answer["error"] == "bad_k" and "max_k" in answer["reason"]


def test_unknown_candidates_can_be_allowed(served) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    status, body = server.request("/score", {"user": _user(), "candidates": [ITEMS[0], "nope"], "allow_unknown": True})
    assert status == 200 and body["unknown"] == ["nope"] and body["scores"][1] is None and body["scores"][0] > 0


def test_a_new_version_replaces_the_served_one_without_a_failed_request(served) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, body = server.request("/score", {"user": _user(3), "candidates": ITEMS})
            results.append((status, body["version"] if status == 200 else body))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for seed in (2, 3):
            _publish(writer, live, seed=seed)
            assert server.service.index.maybe_reload()
            deadline = len(results) + 10
            while len(results) < deadline:
                threading.Event().wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    versions = [v for _, v in results]
    assert {1, 3} <= set(versions) and versions[-1] == 3


def test_a_corrupt_version_is_refused_while_serving_continues(served) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    _publish(writer, live, seed=2)
    index_file = sorted(server.service.index.directory.glob("index-0000000002.faiss"))[0]
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0x10
    index_file.write_bytes(bytes(data))
    assert not server.service.index.maybe_reload()
    status, body = server.request("/score", {"user": _user(), "candidates": ITEMS})
    assert status == 200 and body["version"] == 1
    health = server.request("/healthz")[1]
    assert health["version"] == 1 and health["refused_versions"] == 1


def test_metrics_count_requests_errors_and_the_version(served) -> None:
    server, writer, live = served
    _publish(writer, live, seed=1)
    server.service.index.maybe_reload()
    server.request("/score", {"user": _user(), "candidates": ITEMS})
    server.request("/score", raw=b"{oops")
    status, text = server.request("/metrics")
    assert status == 200
    assert 'inttower_serving_requests_total{code="200",endpoint="score"} 1.0' in text
    assert 'inttower_serving_errors_total{reason="malformed_json"} 1.0' in text
    assert "inttower_serving_index_version 1.0" in text
    assert 'inttower_serving_request_duration_seconds_count{endpoint="score"} 2.0' in text


def test_an_ann_retrieval_answers_what_the_exact_scan_answers_when_it_searches_widely(tmp_path: Path) -> None:
    """`[serving] retrieval = "hnsw"`: the ANN index is built when the version loads, before any request."""
    writer, live = SnapshotWriter(tmp_path, keep=5), new_live_index()
    _publish(writer, live, seed=1)
    wide = dataclasses.replace(CONFIG, retrieval="hnsw", hits_per_query=100_000, ef_search=100_000)
    answers = {}
    for name, config in (("exact", CONFIG), ("hnsw", wide)):
        service = ServingService(MODEL, tmp_path, config)
        server = ServiceThread(service)
        try:
            assert service.index.maybe_reload()
            status, answers[name] = server.request("/retrieve", {"user": _user(), "k": 10})
            assert status == 200
        finally:
            server.stop()
            service.close()
    assert answers["hnsw"]["items"] == answers["exact"]["items"]
    np.testing.assert_allclose(answers["hnsw"]["scores"], answers["exact"]["scores"], rtol=1e-6)
