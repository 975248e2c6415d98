"""The telemetry plane: per-rank stats merged into records, and the hub that carries them.

- ``merge``: one step's (or one phase sample's) per-rank stats -> ``step``/``ranks`` records;
- ``snapshot``: the current state of the cluster as a late subscriber needs it;
- ``hub``: the coordinator's record hub: a reliable, acknowledged channel for the display
  rank (replayed after a restart) and a read-only stream that any number of observers join
  and leave at any time (a new one gets the snapshot first; a slow one is dropped at a
  high-water mark and resynchronised, never slowing the run);
- ``client``: the subscriber side, used by rank 0's display and by observers.
"""

from llmcluster.telemetry.client import RecordClient
from llmcluster.telemetry.hub import RecordHub
from llmcluster.telemetry.merge import RankInfo, merge_sample, merge_step, summary_record
from llmcluster.telemetry.snapshot import ClusterSnapshot

__all__ = [
    "ClusterSnapshot",
    "RankInfo",
    "RecordClient",
    "RecordHub",
    "merge_sample",
    "merge_step",
    "summary_record",
]
