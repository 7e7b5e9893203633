"""`[serving]`: where `inttower serve` listens and the bounds it holds requests to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ServingConfig:
    """Bounds keep one request from taking the service: every size a client controls is capped."""

    host: str = "127.0.0.1"  # loopback by default: exposing the service is a deliberate choice
    port: int = field(default=8080, metadata={"ge": 0, "le": 65535})
    max_body_bytes: int = field(default=1_048_576, metadata={"ge": 1024})
    max_candidates: int = field(default=10_000, metadata={"ge": 1})
    max_k: int = field(default=1_000, metadata={"ge": 1})
    # How often the service looks for a newer index version in index_dir.
    poll_interval_s: float = field(default=1.0, metadata={"gt": 0.0})
    # Threads that run the model (scoring releases the GIL inside torch and FAISS).
    workers: int = field(default=2, metadata={"ge": 1})
    # torch's intra-op threads in `inttower serve`: one user's tower is a chain of tiny
    # operations, where waking a thread pool costs more than it saves; concurrency comes
    # from the workers instead.
    torch_threads: int = field(default=1, metadata={"ge": 1})
    # How /retrieve finds the top k. "exact": a blocked sum-of-max scan of the flat index
    # (recall 1 by construction; bench.retrieval measures its cost against Two-Tower's flat
    # search). "ivf" / "hnsw": an ANN index built beside each base version (off the request
    # path), per-head candidates (hits_per_query rows per query vector) re-scored exactly.
    retrieval: Literal["exact", "ivf", "hnsw"] = "exact"
    hits_per_query: int = field(default=1600, metadata={"ge": 1})
    nprobe: int = field(default=64, metadata={"ge": 1})  # IVF lists searched
    ef_search: int = field(default=256, metadata={"ge": 1})  # HNSW candidate list
    hnsw_m: int = field(default=32, metadata={"ge": 2})  # HNSW links per node
