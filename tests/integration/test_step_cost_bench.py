"""bench.step_cost: a tiny real run prints one row per variant and batch size."""

from __future__ import annotations

import pytest

from bench.step_cost import VARIANTS, main


def test_tiny_run_prints_every_variant_at_every_batch_size(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--batches", "1,4", "--steps", "3", "--rounds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "events/s" not in line]
    assert len(rows) == 2 * len(VARIANTS)
    for row in rows:
        name, batch, rate, ratio = (cell.strip() for cell in row.strip("|").split("|"))
        assert name in VARIANTS and batch in {"1", "4"} and float(rate.replace(",", "")) > 0
        assert ratio == "-" or ratio.endswith("x")
    assert any(r.startswith("| IntTower, paper's towers | 1 |") and r.endswith("| 1.00x |") for r in rows)
