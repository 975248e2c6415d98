"""Plot a run's series from a Prometheus server into one PNG (the README's figure).

    pip install '.[dev]'     # matplotlib: a development tool, never a runtime dependency
    python examples/observability/plot_run.py --prometheus http://127.0.0.1:9090 \
        --start 1764616000 --end 1764616300 --out docs/observability.png

Panels follow the Grafana dashboard next to this file: GPU temperature, power and
utilisation per GPU (the DCGM series), and the job's loss with its phases shaded.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import urllib.request
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after choosing the headless backend)

PANELS = (
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (C)"),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (W)"),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (%)"),
)
SHADES = {"eval": "#cfe8ff", "checkpoint": "#ffe2b8", "failed": "#ffc4c4", "restarting": "#ffc4c4",
          "restore": "#e6d9ff", "export": "#d9f2d9", "init": "#eeeeee"}  # fmt: skip


def query_range(base: str, query: str, start: float, end: float) -> list[dict[str, Any]]:
    """Prometheus' /api/v1/query_range at a 1 s step."""
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise SystemExit(f"plot_run: query {query!r} failed: {body}")
    return body["data"]["result"]


def _points(result: dict[str, Any], start: float) -> tuple[list[float], list[float]]:
    return ([float(t) - start for t, _ in result["values"]],
            [float(v) for _, v in result["values"]])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--start", type=float, required=True, help="unix time")
    parser.add_argument("--end", type=float, required=True, help="unix time")
    parser.add_argument("--straggler", type=int, default=None, help="global rank to highlight")
    parser.add_argument("--out", default="observability.png")
    args = parser.parse_args()
    base, start, end = args.prometheus, args.start, args.end

    figure, axes = plt.subplots(len(PANELS) + 1, 1, figsize=(11, 11), sharex=True)
    phases = query_range(base, "llmcluster_phase == 1", start, end)
    for ax in axes:
        for series in phases:
            name = series["metric"]["phase"]
            for t, _ in series["values"]:
                if name in SHADES:
                    ax.axvspan(float(t) - start - 0.5, float(t) - start + 0.5,
                               color=SHADES[name], lw=0)  # fmt: skip
    for ax, (metric, title) in zip(axes, PANELS, strict=False):
        results = query_range(base, metric, start, end)
        hosts = sorted({s["metric"]["Hostname"] for s in results})  # node order, by name
        for series in results:
            labels = series["metric"]
            rank = int(labels["gpu"]) + 8 * hosts.index(labels["Hostname"])
            odd = rank == args.straggler
            ax.plot(*_points(series, start), lw=1.6 if odd else 0.6,
                    color="crimson" if odd else None, alpha=1 if odd else 0.6,
                    label=f"straggler (rank {rank})" if odd else None)  # fmt: skip
        ax.set_ylabel(title)
        if args.straggler is not None:
            ax.legend(loc="lower right", fontsize=8)
    loss = axes[-1]
    for series in query_range(base, "llmcluster_loss", start, end):
        loss.plot(*_points(series, start), color="black", lw=1.2)
    loss.set_ylabel("Training loss")
    loss.set_xlabel("seconds (wall clock); shaded: init grey, eval blue, checkpoint orange, "
                    "failure/restart red, restore violet, export green")  # fmt: skip
    figure.suptitle("llmcluster --ranks 64 --metrics-port 9400, as Prometheus scraped it")
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
