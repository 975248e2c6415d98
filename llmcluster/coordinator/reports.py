"""What the ranks report while they work, turned into records (pure).

Readiness, per-step stats (merged once every rank has reported a step), telemetry samples
between steps, and rank 0's phase reports (held back until the step they follow has been
published, so the records always come in the order a run produces them).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcluster import sim
from llmcluster.coordinator.progress import Progress
from llmcluster.telemetry.merge import RankInfo, merge_sample
from llmcluster.wire.messages import Phase, PhaseState, RankStats, Stats
from llmcluster.wire.records import LogRecord, PhaseName, Record


class Reports:
    """One attempt's reports, and the run's progress they move."""

    def __init__(self, plan: sim.RunPlan, world_size: int, algorithm: str,
                 start_time: float) -> None:  # fmt: skip
        self.world_size, self.algorithm = world_size, algorithm
        self.progress = Progress(plan, start_time)
        self.ready: set[int] = set()
        self.pending: dict[tuple[int, PhaseName | None, int], dict[int, RankStats]] = {}
        self.held: list[Phase] = []
        self.merged_step = 0
        self.rank_dropped: dict[int, int] = {}  # per rank, this attempt
        self.earlier_dropped = 0  # ranks' drops in earlier attempts
        self.accepting = False  # the first barrier is behind us: phases may be published

    def rank_ready(self, rank: int) -> bool:
        """``rank`` passed the first barrier; True once every rank has."""
        self.ready.add(rank)
        return len(self.ready) == self.world_size

    def stats(self, body: Stats, infos: Sequence[RankInfo]) -> list[Record]:
        """One rank's stats; the merged records once every rank has reported them."""
        self.rank_dropped[body.rank] = body.stats.dropped
        key = (body.step, body.phase, body.sample)
        pending = self.pending.setdefault(key, {})
        pending[body.rank] = body.stats
        if len(pending) < self.world_size:
            return []
        del self.pending[key]
        stats = [pending[r] for r in range(self.world_size)]
        progress = self.progress
        if body.phase is not None:
            return [merge_sample(step=body.step, phase=body.phase, stats=stats, infos=infos,
                                 sim_time=progress.sim_time + body.phase_elapsed_s)]  # fmt: skip
        merged = progress.step(body.step, stats, infos, self.algorithm)
        out: list[Record] = []
        if merged.disagreeing:
            text = (f"loss mismatch at step {body.step}: ranks {list(merged.disagreeing)} "
                    "disagree with rank 0 after allreduce")  # fmt: skip
            out.append(LogRecord(level="ERROR", text=text, time=progress.sim_time))
        self.merged_step = body.step
        return [*out, merged.step, merged.ranks, *self.release()]

    def phase(self, body: Phase) -> list[Record]:
        """A phase rank 0 began or ended (held until its step has been published)."""
        if not self.accepting or body.step > self.merged_step:
            self.held.append(body)
            return []
        if body.state is PhaseState.BEGIN:
            return [self.progress.phase_begins(body.name, body.step)]
        record = self.progress.phase_ends(body.name, body.step, body.val_loss)
        return [record] if record is not None else []

    def release(self) -> list[Record]:
        """Phase reports whose step has now been published."""
        held, self.held = self.held, []
        return [record for body in held for record in self.phase(body)]

    @property
    def ranks_dropped(self) -> int:
        """Messages the ranks dropped, all attempts."""
        return self.earlier_dropped + sum(self.rank_dropped.values())

    def new_attempt(self) -> None:
        """Forget the last attempt's partial results; resume at the last checkpoint."""
        self.earlier_dropped += sum(self.rank_dropped.values())
        self.rank_dropped.clear()
        self.ready.clear()
        self.pending.clear()
        self.held.clear()
        self.accepting = False
        self.merged_step = self.progress.resume_step - 1
