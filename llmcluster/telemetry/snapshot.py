"""The cluster as a subscriber joining now must see it: the latest record of each kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmcluster.wire.records import (
    EvalRecord,
    FailureRecord,
    PhaseRecord,
    RanksRecord,
    ReadyRecord,
    Record,
    RestartRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
)


@dataclass
class ClusterSnapshot:
    """Folds the record stream into what a late subscriber needs (pure, no I/O).

    Each kept record carries the hub sequence number it was published with, so a subscriber
    can tell what it has already seen."""

    seqs: dict[str, int] = field(default_factory=dict)
    run: RunRecord | None = None
    ready: ReadyRecord | None = None
    step: StepRecord | None = None
    ranks: RanksRecord | None = None
    phase: PhaseRecord | None = None
    evaluation: EvalRecord | None = None
    failure: FailureRecord | None = None
    restart: RestartRecord | None = None
    summary: SummaryRecord | None = None

    def update(self, seq: int, record: Record) -> None:
        """Take record number ``seq`` into account."""
        self.seqs[record.TYPE] = seq
        if isinstance(record, RunRecord):
            self.run, self.ready, self.phase = record, None, None
        elif isinstance(record, ReadyRecord):
            self.ready = record
        elif isinstance(record, StepRecord):
            self.step, self.phase = record, None
        elif isinstance(record, RanksRecord):
            self.ranks = record
        elif isinstance(record, PhaseRecord):
            self.phase = record
        elif isinstance(record, EvalRecord):
            self.evaluation = record
        elif isinstance(record, FailureRecord):
            self.failure = record
        elif isinstance(record, RestartRecord):
            self.restart, self.failure = record, None
        elif isinstance(record, SummaryRecord):
            self.summary = record

    def records(self) -> list[tuple[int, Record]]:
        """The snapshot as (seq, record), in publication order."""
        kept = (
            self.run,
            self.ready,
            self.evaluation,
            self.step,
            self.ranks,
            self.phase,
            self.restart,
            self.failure,
            self.summary,
        )
        return sorted((self.seqs[r.TYPE], r) for r in kept if r is not None)
