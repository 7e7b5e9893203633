"""Build the model a config names."""

from __future__ import annotations

from model.base import PreRanker
from model.config import ModelConfig
from model.inttower import IntTower
from model.two_tower import LogisticRegression, TwoTower

MODELS: dict[str, type[PreRanker]] = {"inttower": IntTower, "two_tower": TwoTower, "lr": LogisticRegression}


def build_model(config: ModelConfig) -> PreRanker:
    """The model named by ``config.kind``, freshly initialised."""
    return MODELS[config.kind](config)
