"""The hand-over from a batch fit to the daemon: a fitted checkpoint, its fingerprint, loading it.

A fit writes a checkpoint in the daemon's own format (`model.checkpoint.CheckpointStore`,
part ``trainer-<kind>.pt`` = `OnlineTrainer.state_dict`: weights, Adam moments, step
count) whose metadata says what it is: ``"origin": "fit"``, the model config it was
fitted with and its fingerprint, and the event-time watermark it covered. A daemon
started with ``--init-from`` loads it when it has no checkpoint of its own; a model
config that differs in anything that shapes the weights or reads the features is refused
in one line naming what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import PREFIX, Checkpoint, CheckpointStore
from model.config import ModelConfig
from model.online import OnlineTrainer

FIT_ORIGIN = "fit"


class WarmStartError(ValueError):
    """A checkpoint cannot start this model (missing, unreadable, or fitted to another config)."""


def trainer_part(kind: str) -> str:
    """The checkpoint part holding the trainer state of the model ``kind`` (as the daemon names it)."""
    return f"trainer-{kind}.pt"


def config_dict(config: ModelConfig) -> dict[str, Any]:
    """The model config as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def model_fingerprint(config: ModelConfig) -> str:
    """A short hash of everything in the model config: feature spec, shapes, loss settings."""
    return hashlib.sha256(json.dumps(config_dict(config), sort_keys=True).encode()).hexdigest()[:16]


def fit_metadata(config: ModelConfig, watermark_ms: int | None, **extra: Any) -> dict[str, Any]:
    """Metadata of a fitted checkpoint (see the module docstring)."""
    return {
        "origin": FIT_ORIGIN, "models": [config.kind], "fingerprint": model_fingerprint(config),
        "model_config": config_dict(config), "watermark_ms": watermark_ms, **extra,
    }


def serialize_state(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_state(checkpoint: Checkpoint, part: str, device: torch.device) -> dict:
    """A trainer state written by `serialize_state` (tensors only: no pickle from disk)."""
    return torch.load(io.BytesIO(checkpoint.read(part)), map_location=device, weights_only=True)


def load_trainer(trainer: OnlineTrainer, state: dict, source: Path) -> None:
    """``trainer.load_state_dict(state)``; a state of another shape is a `WarmStartError` naming ``source``."""
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise WarmStartError(f"{source}: does not match the model config ({first})") from None


def find_checkpoint(path: str | Path) -> Checkpoint:
    """A verified checkpoint: ``path`` is a ``ckpt-*`` directory, or a checkpoint directory (its newest)."""
    path = Path(path)
    if not path.is_dir():
        raise WarmStartError(f"{path}: no such checkpoint directory")
    if path.name.startswith(PREFIX):
        checkpoint = CheckpointStore._verify(path)
    else:
        checkpoint = CheckpointStore(path, keep=1 << 30).latest()
    if checkpoint is None:
        raise WarmStartError(f"{path}: no complete checkpoint in it")
    return checkpoint


def config_differences(stored: dict[str, Any], config: ModelConfig) -> list[str]:
    """What differs between a checkpoint's model config and ``config``, one phrase per setting."""
    current = config_dict(config)
    out = []
    for key in sorted(set(stored) | set(current)):
        if key == "kind" or stored.get(key) == current.get(key):
            continue
        if key == "features":
            out.append(_feature_differences(stored.get(key) or [], current[key]))
        else:
            out.append(f"{key} {stored.get(key)!r} in the checkpoint, {current.get(key)!r} here")
    return out


def _feature_differences(stored: list[dict], current: list[dict]) -> str:
    before, after = {f["name"]: f for f in stored}, {f["name"]: f for f in current}
    missing, added = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    parts = [f"{label} {', '.join(names)}" for label, names in
             (("fields only in the checkpoint:", missing), ("fields only here:", added), ("fields changed:", changed)) if names]
    return "feature spec differs (" + ("; ".join(parts) or "field order") + ")"


def load_trainer_states(checkpoint: Checkpoint, config: ModelConfig, kinds: list[str],
                        device: torch.device) -> dict[str, dict]:
    """Trainer state of each of ``kinds`` held by ``checkpoint``, after checking it was made for ``config``.

    The fingerprint covers the whole model config except ``kind`` (shadow models of
    other kinds share the rest); a checkpoint without one (written before fingerprints)
    is checked by loading alone.
    """
    meta = checkpoint.metadata
    stored = meta.get("model_config")
    if stored is not None:
        differences = config_differences(stored, config)
        if differences:
            raise WarmStartError(f"{checkpoint.path} was made for another model config: {'; '.join(differences)}")
    states = {kind: read_state(checkpoint, trainer_part(kind), device) for kind in kinds if checkpoint.has(trainer_part(kind))}
    if not states:
        raise WarmStartError(f"{checkpoint.path} holds no model of kind {' or '.join(kinds)} (it holds {', '.join(meta.get('models', []))})")
    return states


def warm_start(path: str | Path, config: ModelConfig, trainers: dict[str, OnlineTrainer],
               device: torch.device) -> tuple[Checkpoint, list[str]]:
    """Load each of ``trainers`` (by model kind) that the fitted checkpoint at ``path`` holds; the others stay fresh.

    Returns the checkpoint and the kinds loaded.
    Raises `WarmStartError` (one line) when the checkpoint is missing, was made for
    another model config, or holds none of the kinds.
    """
    found = find_checkpoint(path)
    states = load_trainer_states(found, config, list(trainers), device)
    for kind, state in states.items():
        load_trainer(trainers[kind], state, found.path)
    return found, sorted(states)
