"""Config loading: every mistake is one line naming the file, the key path, the expectation."""

from pathlib import Path

import pytest

from inttower.config import (
    JOINED_MMAP_THRESHOLD_BYTES,
    LABELLED_MMAP_THRESHOLD_BYTES,
    AppConfig,
    load_config,
    malloc_mmap_threshold,
)
from inttower.errors import ConfigError
from tests.conftest import REPO_ROOT


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.toml")))
def test_shipped_configs_load(name):
    assert isinstance(load_config(REPO_ROOT / "configs" / name), AppConfig)


def test_values_reach_the_dataclasses(tmp_path):
    config = load_config(_write(tmp_path, "[model]\nheads = 8\nhidden = [64, 32]\n[train]\nlearning_rate = 1\n"))
    assert config.model.heads == 8
    assert config.model.hidden == (64, 32)
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[model]\nhedas = 4\n", r"c\.toml: model\.hedas: unknown key \(expected one of: .*heads"),
        ("[model]\nheads = \"four\"\n", r"c\.toml: model\.heads: expected an integer, got a string \('four'\)"),
        ("[model]\nheads = 0\n", r"c\.toml: model\.heads: expected a value >= 1, got 0"),
        ("[model]\ndropout = 1.5\n", r"model\.dropout: expected a value < 1\.0, got 1\.5"),
        ("[model]\nnormalization = \"group\"\n", r"model\.normalization: expected one of"),
        ("[online]\namp = 1\n", r"online\.amp: expected true or false"),
        ("[model]\nsimilarity = \"l2\"\n", r"model\.similarity: expected one of 'cosine', 'dot', got 'l2'"),
        ("[model]\nhidden = 3\n", r"model\.hidden: expected a list of int"),
        ("[model]\nhidden = [300, \"x\"]\n", r"model\.hidden\[1\]: expected an integer"),
        ("model = 3\n", r"c\.toml: model: expected a table"),
        (
            "[[model.features]]\nname = \"u\"\nkind = \"categorical\"\ntower = \"user\"\nbuckets = 1\n",
            r"model\.features\[0\]\.buckets: expected a value >= 2, got 1",
        ),
        (
            "[[model.features]]\nname = \"u\"\nkind = \"categorical\"\ntower = \"user\"\n",
            r"c\.toml: model: the item tower needs at least one feature",
        ),
        (
            "[[model.features]]\nname = \"u\"\nkind = \"set\"\ntower = \"user\"\n",
            r"model\.features\[0\]\.kind: expected one of 'categorical', 'multi_categorical', 'numeric', got 'set'",
        ),
        ("[[model.features]]\nkind = \"numeric\"\ntower = \"user\"\n", r"model\.features\[0\]: .*name"),
        ("[train]\nlearning_rate = 0\n", r"train\.learning_rate: expected a value > 0\.0, got 0\.0"),
        ("[data.movielens]\npositive_min_rating = \"4\"\n", r"data\.movielens\.positive_min_rating: expected an integer"),
    ],
)
def test_mistakes_fail_with_one_line_naming_file_and_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_duplicate_feature_names_are_rejected(tmp_path):
    feature = "[[model.features]]\nname = \"x\"\nkind = \"categorical\"\ntower = \"{}\"\n"
    with pytest.raises(ConfigError, match="repeated: x"):
        load_config(_write(tmp_path, feature.format("user") + feature.format("item")))


def test_missing_file_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML"):
        load_config(_write(tmp_path, "[model\n"))


@pytest.mark.parametrize(("toml", "expected"), [
    ("", LABELLED_MMAP_THRESHOLD_BYTES),
    ('[feedback]\nmode = "joined"\n', JOINED_MMAP_THRESHOLD_BYTES),
    ('[feedback]\nmode = "joined"\n[daemon]\nmalloc_mmap_threshold_bytes = 4194304\n', 4 * 2**20),
    ("[daemon]\nmalloc_mmap_threshold_bytes = 0\n", 0),
])
def test_the_mmap_threshold_follows_the_feedback_mode_unless_set(tmp_path, toml, expected):
    (tmp_path / "c.toml").write_text(toml)
    assert malloc_mmap_threshold(load_config(tmp_path / "c.toml")) == expected
