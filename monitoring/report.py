"""Plots of streaming quality against event time, for reports and the demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_quality_timeline(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    out: str | Path,
    marker_ts_ms: int | None = None,
    marker_label: str = "preference shift",
    title: str = "Prequential quality on the stream",
) -> Path:
    """Streaming AUC and logloss against event time, one line per model.

    ``histories[name]`` is a list of points with ``event_ts_ms``, ``auc`` and ``logloss``.
    """
    out = Path(out)
    fig, (ax_auc, ax_loss) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, points in histories.items():
        times = [datetime.fromtimestamp(p["event_ts_ms"] / 1000, tz=timezone.utc) for p in points]
        ax_auc.plot(times, [p["auc"] for p in points], label=name)
        ax_loss.plot(times, [p["logloss"] for p in points], label=name)
    if marker_ts_ms is not None:
        when = datetime.fromtimestamp(marker_ts_ms / 1000, tz=timezone.utc)
        for ax in (ax_auc, ax_loss):
            ax.axvline(when, color="grey", linestyle="--", linewidth=1)
        ax_auc.annotate(marker_label, xy=(when, 0.98), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=9)
    ax_auc.set_ylabel("streaming AUC (rolling window)")
    ax_loss.set_ylabel("streaming logloss (rolling window)")
    ax_loss.set_xlabel("event time (UTC)")
    ax_auc.set_title(title)
    for ax in (ax_auc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
