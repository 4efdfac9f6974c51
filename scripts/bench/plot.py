"""--plot: throughput and p99 latency against concurrency, per task, for each system."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def curves(report: Mapping[str, Any], task: str) -> dict[str, list[tuple[int, float | None, float | None]]]:
    """{system: [(clients, requests/s, p99 ms), ...]} from the closed-loop rows of `task`."""
    systems = {"voicebus": report[task].get("closed_loop", [])}
    peer = (report.get("peer") or {}).get(task) or {}
    if peer.get("closed_loop"):
        systems["peer (Ray Serve)"] = peer["closed_loop"]
    return {
        name: [(row["clients"], row.get("throughput_rps"), row.get("p99_ms")) for row in rows]
        for name, rows in systems.items()
    }


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """A PNG with one row per task: throughput (left, with the best raw engine dashed) and
    p99 latency (right) against the number of closed-loop clients."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        left, right = axes[row]
        for name, points in curves(report, task).items():
            clients = [c for c, _, _ in points]
            left.plot(clients, [t for _, t, _ in points], marker="o", label=name)
            right.plot(clients, [p for _, _, p in points], marker="o", label=name)
        best = report[task].get("best_raw", {})
        if best.get("throughput_rps"):
            left.axhline(
                best["throughput_rps"],
                linestyle="--",
                color="grey",
                label=f"raw engine, batch {best['batch_size']}",
            )
        model = report[task].get("model", task)
        left.set(
            title=f"{task.upper()} ({model}): throughput",
            xlabel="concurrent clients",
            ylabel="requests / s",
            xscale="log",
            xticks=[1, 2, 4, 8, 16],
        )
        right.set(
            title=f"{task.upper()} ({model}): p99 latency",
            xlabel="concurrent clients",
            ylabel="ms",
            xscale="log",
            xticks=[1, 2, 4, 8, 16],
        )
        for axis in (left, right):
            axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.grid(alpha=0.3)
            axis.legend()
    meta = report.get("meta", {})
    fig.suptitle(f"voicebus benchmark {meta.get('date', '')} ({meta.get('machine', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
