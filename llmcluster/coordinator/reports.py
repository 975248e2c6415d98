"""What the ranks report while they work, turned into records (pure).

Readiness, per-step stats (merged once every rank has reported a step), telemetry samples
between steps, and rank 0's phase reports (held back until the step they follow has been
published, so the records always come in the order a run produces them).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcluster import sim
from llmcluster.telemetry.merge import RankInfo, merge_sample
from llmcluster.telemetry.progress import Progress
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
        self.plan = plan
        self.phase_starts: dict[tuple[PhaseName, int], float] = {}  # open phases' start times
        self.sampled: dict[tuple[PhaseName, int], int] = {}  # samples published per phase
        self.early_samples: list[tuple[Stats, list[RankStats]]] = []  # before their phase

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
            self.early_samples.append((body, stats))
            return self._samples(infos)
        merged = progress.step(body.step, stats, infos, self.algorithm)
        out: list[Record] = []
        if merged.disagreeing:
            text = (f"loss mismatch at step {body.step}: ranks {list(merged.disagreeing)} "
                    "disagree with rank 0 after allreduce")  # fmt: skip
            out.append(LogRecord(level="ERROR", text=text, time=progress.sim_time))
        self.merged_step = body.step
        return [*out, merged.step, merged.ranks, *self.release(infos)]

    def phase(self, body: Phase, infos: Sequence[RankInfo] = ()) -> list[Record]:
        """A phase rank 0 began or ended: held until its step has been published, and its end
        until every sample of it has been (so the records' order and times never depend on
        which socket delivered first). Reports wait behind a held one: the next phase never
        begins before the last has ended."""
        if self.held:
            self.held.append(body)
            return []
        return self._phase(body, infos)

    def _phase(self, body: Phase, infos: Sequence[RankInfo]) -> list[Record]:
        key = (body.name, body.step)
        if not self.accepting or body.step > self.merged_step:
            self.held.append(body)
            return []
        if body.state is PhaseState.BEGIN:
            begun = self.progress.phase_begins(body.name, body.step)
            self.phase_starts[key], self.sampled[key] = begun.time, 0
            return [begun, *self._samples(infos)]
        expected = sim.phase_samples(self.plan, body.name.value, body.step)
        if key not in self.phase_starts or self.sampled.get(key, 0) < expected:
            self.held.append(body)
            return []
        del self.phase_starts[key]
        record = self.progress.phase_ends(body.name, body.step, body.val_loss)
        return [record] if record is not None else []

    def _samples(self, infos: Sequence[RankInfo]) -> list[Record]:
        """Merged samples whose phase has begun, at the phase's start + their elapsed time."""
        out: list[Record] = []
        waiting = []
        for body, stats in self.early_samples:
            assert body.phase is not None
            key = (body.phase, body.step)
            start = self.phase_starts.get(key)
            if start is None:
                waiting.append((body, stats))
                continue
            out.append(merge_sample(step=body.step, phase=body.phase, stats=stats, infos=infos,
                                    sim_time=start + body.phase_elapsed_s))  # fmt: skip
            self.sampled[key] += 1
        self.early_samples = waiting
        return [*out, *self.release(infos)] if out else out

    def release(self, infos: Sequence[RankInfo] = ()) -> list[Record]:
        """Phase reports that can now be published (their step, or their samples, are in)."""
        held, self.held = self.held, []
        out: list[Record] = []
        for index, body in enumerate(held):
            out += self._phase(body, infos)
            if self.held:  # it still waits, and so do the reports after it
                self.held += held[index + 1 :]
                break
        return out

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
        self.early_samples.clear()
        self.phase_starts.clear()
        self.sampled.clear()
        self.accepting = False
        self.merged_step = self.progress.resume_step - 1
