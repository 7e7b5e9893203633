"""`inttower serve`: HTTP + JSON over the newest good index version and its model snapshot.

Built on aiohttp: one well-kept package holds an asyncio HTTP server (keep-alive,
body-size limits, graceful shutdown on SIGTERM) and the client the tests use, with no
ASGI server to pick and pin beside it. The event loop only parses and answers; scoring
runs in a small thread pool (torch and FAISS release the GIL), so a slow request never
stalls health checks or metrics.

Every request takes one snapshot reference and uses only it, so a version published
mid-request never mixes into its answer, and the response names the version it read.
A follower thread verifies and loads each new version (index and model) and swaps the
reference; requests never load or wait for a load.
A version whose files fail verification is refused by `IndexReader`, and the last good
one keeps serving.

Endpoints: ``POST /score {user, [context], candidates, [allow_unknown]}``,
``POST /retrieve {user, [context], k}``, ``GET /healthz``, ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from index_sync.disk import IndexReader
from index_sync.retrieval import AnnSearch
from index_sync.serving import IndexNotReadyError, Reader, ServingSnapshot
from index_sync.snapshot_files import DiskSnapshots
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder, event_schema
from monitoring.metrics import ServingMetrics
from serving.config import ServingConfig
from serving.requests import RequestError, parse_retrieve, parse_score

log = logging.getLogger("inttower.serving")
MAX_UNKNOWN_NAMED = 5  # unknown candidate ids named in a refusal


class ServingService:
    """Follows ``index_dir`` and answers requests from the newest snapshot that loaded."""

    def __init__(self, model: ModelConfig, index_dir: Path, config: ServingConfig,
                 metrics: ServingMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ServingMetrics()
        self.schema = event_schema(model.features)  # requests read its user and context structs
        self.index = IndexReader(Path(index_dir), poll_interval_s=config.poll_interval_s)
        self._snapshots = DiskSnapshots(self.index, lambda: build_model(model))
        self._load_lock = threading.Lock()  # one load at a time (the follower, or callers before `start`)
        ann = None if config.retrieval == "exact" else AnnSearch(
            config.retrieval, config.hits_per_query, config.nprobe, config.ef_search, config.hnsw_m)
        self.reader = Reader(FeatureEncoder(model.features), self.snapshot, ann)
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="serving")
        self._version_seen = 0
        self._current: ServingSnapshot | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def snapshot(self) -> ServingSnapshot | None:
        """The snapshot requests read now: a reference read, never a load (once `start`ed)."""
        if self._follower is None:  # not started (tests drive reloads themselves): load in the caller
            self._refresh()
        return self._current

    def _refresh(self) -> None:
        with self._load_lock:
            snapshot = self._snapshots()
            if snapshot is not None and snapshot is not self._current:
                self.reader.prepare(snapshot)  # e.g. an ANN index for a new base, before any request sees it
        if snapshot is not None and snapshot.version.version != self._version_seen:
            self._version_seen = snapshot.version.version
            self.metrics.version.set(snapshot.version.version)
            self.metrics.versions_loaded.inc()
            log.info("serving index version %d (%d items)", snapshot.version.version, snapshot.version.item_count)
        self._current = snapshot  # one reference swap: a request holds the snapshot it took

    def _follow(self) -> None:
        """Poll the index directory, verify and load a new version and its model, then swap it in:
        all off the request path, so a swap costs requests no wait (bench.serving_load)."""
        while True:
            try:
                self.index.maybe_reload()
                self._refresh()
            except Exception:  # keep serving the last good snapshot; the next poll retries
                log.exception("following %s failed", self.index.directory)
            if self._stop.wait(self.config.poll_interval_s):
                return

    def start(self) -> None:
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow, name="serving-follower", daemon=True)
        self._follower.start()

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(30.0)
        self._executor.shutdown(wait=True)

    # -- handlers ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.add_routes([
            web.post("/score", self._endpoint("score", self._score)),
            web.post("/retrieve", self._endpoint("retrieve", self._retrieve)),
            web.get("/healthz", self._healthz),
            web.get("/metrics", self._metrics),
        ])
        return app

    def _endpoint(self, name: str, answer: Callable[[bytes], dict[str, Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                if request.content_length is not None and request.content_length > self.config.max_body_bytes:
                    raise RequestError(413, "body_too_large",
                                       f"body of {request.content_length} bytes > [serving] max_body_bytes "
                                       f"{self.config.max_body_bytes}")
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise RequestError(413, "body_too_large",
                                       f"body > [serving] max_body_bytes {self.config.max_body_bytes}") from None
                result = await asyncio.get_running_loop().run_in_executor(self._executor, answer, body)
                response = web.json_response(result)
            except RequestError as exc:
                self.metrics.errors.labels(exc.label).inc()
                response = web.json_response({"error": exc.label, "reason": exc.reason}, status=exc.status)
            except IndexNotReadyError as exc:
                self.metrics.errors.labels("no_index").inc()
                response = web.json_response({"error": "no_index", "reason": str(exc)}, status=503)
            except Exception:  # noqa: BLE001 - a bug must answer 500 and be counted, not drop the connection
                log.exception("%s failed", name)
                self.metrics.errors.labels("internal").inc()
                response = web.json_response({"error": "internal", "reason": "internal error (see the service log)"},
                                             status=500)
            self.metrics.requests.labels(name, str(response.status)).inc()
            self.metrics.request_duration.labels(name).observe(time.perf_counter() - started)
            return response

        return handle

    def _score(self, body: bytes) -> dict[str, Any]:
        request = parse_score(body, self.schema, self.config)
        scores = self.reader.score(request.user, request.candidates)
        unknown = [c for c, ok in zip(scores.item_ids, scores.known) if not ok]
        if unknown and not request.allow_unknown:
            named = ", ".join(repr(c) for c in unknown[:MAX_UNKNOWN_NAMED])
            raise RequestError(422, "unknown_items", f"{len(unknown)} candidates are not in index version "
                               f"{scores.version}: {named}{' ...' if len(unknown) > MAX_UNKNOWN_NAMED else ''} "
                               "(send allow_unknown: true to score the others)")
        return {"version": scores.version, "items": scores.item_ids,
                "scores": [None if np.isnan(p) else float(p) for p in scores.probabilities], "unknown": unknown}

    def _retrieve(self, body: bytes) -> dict[str, Any]:
        request = parse_retrieve(body, self.schema, self.config)
        found = self.reader.retrieve(request.user, request.k)
        return {"version": found.version, "items": found.item_ids, "scores": [float(p) for p in found.probabilities]}

    async def _healthz(self, request: web.Request) -> web.Response:
        snapshot = await asyncio.get_running_loop().run_in_executor(self._executor, self.snapshot)
        if snapshot is None:
            return web.json_response({"status": "no_index", "version": None, "index_age_s": None}, status=503)
        age = max(time.time() - snapshot.version.created_at, 0.0)
        return web.json_response({"status": "ok", "version": snapshot.version.version,
                                  "items": snapshot.version.item_count, "index_age_s": round(age, 3),
                                  "refused_versions": self.index.refused_total})

    async def _metrics(self, request: web.Request) -> web.Response:
        current = self.index.current  # the newest verified version; no model load on a scrape
        if current is not None:
            self.metrics.index_age.set(max(time.time() - current.created_at, 0.0))
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def run_server(service: ServingService, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (aiohttp's graceful shutdown), then stop following the index."""
    torch.set_num_threads(service.config.torch_threads)
    service.start()
    try:
        web.run_app(service.app(), host=host, port=port, print=lambda line: log.info("%s", line), access_log=None)
    finally:
        service.close()
