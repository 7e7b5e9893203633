"""The daemon's side of joined feedback (`[feedback] mode = "joined"`): wiring, no join logic.

The join itself is `stream.joiner`'s. This module holds what the daemon adds around it:
scoring each batch's events as they arrive, the clicks' own topic when
``[feedback] clicks_topic`` is set (a second consumer over the same partition numbers,
its offsets checkpointed beside the impressions'), each rank's join state in the
checkpoint (re-split by partition on restore), and the step record that meets each
impression's arrival prediction with its final label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa

from inttower.distributed import StepRecord, merge_offsets
from inttower.config import AppConfig
from inttower.errors import UserError
from model.online import StepResult
from stream.consumer import Batch, ClickStreamConsumer
from stream.events import EventSchema
from stream.feedback_wire import CLICK_SCHEMA
from stream.joiner import FNW_DUPLICATE, LABELLED, FeedbackJoiner, Joined
from stream.topics import TopicNotFoundError, topic_partitions
from stream.wire import Reject

log = logging.getLogger("inttower.daemon")
STATE_PART = "feedback-{rank}"  # checkpoint parts: each rank's join state


class JoinedFeedback:
    """One rank's joiner, and the clicks' topic when it is not the impressions'."""

    def __init__(self, config: AppConfig, schema: EventSchema, models: Sequence[str]) -> None:
        self.config = config.feedback
        self.stream = config.stream
        self.schema = schema
        self.models = list(models)
        self.joiner = FeedbackJoiner(self.config, schema.arrow_schema(), self.models)
        self.click_offsets: dict[int, int] = {}  # next offset of each clicks-topic partition this rank reads
        self._restored_click_offsets: dict[int, int] = {}
        self._states: list[bytes] = []  # restored, until this rank knows its partitions
        self._restored_from = ""
        self.clicks: ClickStreamConsumer | None = None
        self.current: Joined | None = None  # this iteration's join output

    @property
    def two_topics(self) -> bool:
        return bool(self.config.clicks_topic)

    # -- checkpoints -------------------------------------------------------------------
    def restore(self, path: str, meta: dict, read: Callable[[str], bytes]) -> None:
        ranks = int(meta.get("feedback_ranks", 0))
        if not ranks and meta["events"]:
            raise UserError(f"{path}: written by a daemon with labelled feedback; joined feedback needs its own "
                            "daemon.checkpoint_dir")
        self._states = [read(STATE_PART.format(rank=r)) for r in range(ranks)]
        self.click_offsets = {int(p): int(o) for p, o in meta.get("click_offsets", {}).items()}
        self._restored_click_offsets = dict(self.click_offsets)
        self._restored_from = path

    def share(self) -> tuple[bytes, dict[int, int]]:
        """What this rank adds to a checkpoint (gathered on rank 0)."""
        return self.joiner.state_bytes(), dict(self.click_offsets)

    def checkpoint(self, shares: Sequence[tuple[bytes, dict[int, int]]]) -> tuple[dict[str, bytes], dict]:
        """Rank 0: the checkpoint parts and metadata of every rank's share."""
        parts = {STATE_PART.format(rank=rank): share[0] for rank, share in enumerate(shares)}
        offsets = merge_offsets(self._restored_click_offsets, [share[1] for share in shares])
        return parts, {"feedback_ranks": len(shares), "click_offsets": {str(p): o for p, o in sorted(offsets.items())}}

    # -- start and stop ----------------------------------------------------------------
    def partitions(self, share: list[int] | None) -> list[int] | None:
        """The partitions this rank reads: with a clicks topic, both topics' (same count, checked), all of them alone."""
        if not self.two_topics:
            return share
        clicks = replace(self.stream, topic=self.config.clicks_topic)
        try:
            ours, theirs = topic_partitions(self.stream), topic_partitions(clicks)
        except TopicNotFoundError as exc:
            raise UserError(str(exc)) from None
        if len(ours) != len(theirs):
            raise UserError(
                f"[feedback] clicks_topic {clicks.topic!r} has {len(theirs)} partitions and [stream] topic "
                f"{self.stream.topic!r} {len(ours)}: a click must land on its impression's partition number, so give "
                "both topics the same partition count")
        return share if share is not None else ours

    def start(self, partitions: list[int] | None) -> None:
        """This rank's share of the restored join state; the clicks' consumer, if they have a topic."""
        if self._states:
            try:
                self.joiner = FeedbackJoiner.from_states(self._states, self.config, self.schema.arrow_schema(),
                                                         self.models, partitions)
            except (ValueError, KeyError, pa.ArrowException) as exc:
                raise UserError(f"{self._restored_from}: its join state does not fit this config ({exc}); "
                                "use another daemon.checkpoint_dir") from None
            self._states = []
        if self.two_topics:
            if partitions is not None:
                self.click_offsets = {p: o for p, o in self.click_offsets.items() if p in partitions}
            stream = replace(self.stream, topic=self.config.clicks_topic, assignment="static",
                             group_id=f"{self.stream.group_id}-clicks")
            self.clicks = ClickStreamConsumer(stream, self.schema, start_offsets=dict(self.click_offsets),
                                              partitions=partitions, joined=True)

    def next_clicks(self) -> Batch | None:
        """The clicks topic's next batch, if one is ready now (never waits: the impressions' poll does)."""
        return self.clicks.next_batch(timeout_s=0.0) if self.clicks is not None else None

    def lag(self) -> int:
        if self.clicks is None:
            return 0
        return sum(v for v in self.clicks.lag().values() if v is not None)

    def commit(self) -> None:
        if self.clicks is not None:
            self.clicks.commit(dict(self.click_offsets))

    def close(self) -> None:
        if self.clicks is not None:
            self.clicks.commit(dict(self.click_offsets))
            self.clicks.close()

    # -- one iteration -----------------------------------------------------------------
    def join(self, batch: Batch | None, click_batch: Batch | None,
             score: Callable[[pa.Table], dict[str, np.ndarray]]) -> tuple[Batch | None, list[Reject]]:
        """Score the events on arrival, join; the batch of what the joiner released, and the clicks topic's rejects.

        The batch's rejects are its own topic's; the clicks topic's (its decoding, and the
        joiner's orphan clicks when clicks have a topic of their own) come back apart, to
        be dead-lettered under that topic.
        """
        self.current = None
        if batch is None and click_batch is None:
            return None, []
        if batch is None:  # clicks alone: the impressions' side moved no event time
            batch = replace(click_batch, table=self.schema.arrow_schema().empty_table(), rejects=[], next_offsets={},
                            first_offsets={}, events_by_partition={}, clicks=None, max_ts={},
                            event_partitions=np.zeros(0, dtype=np.int32))
        events = batch.table
        scores = score(events) if events.num_rows else {m: np.zeros(0) for m in self.models}
        clicks_from = click_batch if self.two_topics else batch
        clicks = clicks_from.clicks if clicks_from is not None and clicks_from.clicks is not None else None
        joined = self.joiner.add(events, scores, CLICK_SCHEMA.empty_table() if clicks is None else clicks, batch.max_ts,
                                 batch.event_partitions, click_max_ts=click_batch.max_ts if click_batch else {})
        click_rejects: list[Reject] = []
        if click_batch is not None:
            self.click_offsets.update(click_batch.next_offsets)
            click_rejects = list(click_batch.rejects)
        self.current = joined
        if self.two_topics:
            return replace(batch, table=joined.table), [*click_rejects, *joined.rejects]
        return replace(batch, table=joined.table, rejects=[*batch.rejects, *joined.rejects]), click_rejects

    @property
    def fnw_in_window(self) -> float:
        return self.joiner.in_window_share

    def fnw_rows(self, start: int, stop: int) -> np.ndarray | None:
        """Which of the released rows ``start:stop`` train with the FNW loss (every joined row under "fnw")."""
        if self.current is None or self.config.late_click_policy != "fnw":
            return None
        return self.current.roles[start:stop] != LABELLED

    def record(self, table: pa.Table, results: dict[str, StepResult], audit: bool, index: bool,
               start: int = 0) -> StepRecord:
        """The quality meets each impression's final label with its *arrival* prediction, once (no FNW duplicates).

        ``table``: the released rows from ``start`` that one step trained. An audit line is
        ``event_id<TAB>label``, and ``...<TAB>fnw`` for an FNW duplicate.
        """
        rows = slice(start, start + table.num_rows)
        roles = self.current.roles[rows]
        counted = roles != FNW_DUPLICATE
        labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.float32)
        measured = {name: replace(result, probabilities=self.current.scores[name][rows][counted], labels=labels[counted])
                    for name, result in results.items()}
        ids = None
        if audit:
            ids = [f"{event_id}\t{int(label)}" + ("\tfnw" if role == FNW_DUPLICATE else "")
                   for event_id, label, role in zip(table.column("event_id").to_pylist(), labels, roles)]
        return StepRecord(measured, table.column("ts").to_numpy()[counted], ids, table if index else None)

    def bounded_sizes(self) -> dict[str, int]:
        return self.joiner.bounded_sizes()

