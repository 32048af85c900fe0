"""Turn a run's raw results into the summary (medians over rounds), the targets (met or
missed), a text/markdown table and the latency-versus-offered-load plot.

Also runnable on a saved result: ``python -m bench.report bench/results/<stamp>.json
[--plot out.png] [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

LABELS = {
    "baseline_a.unary32": "(a) bare grpclib + 1 conditional publish, unary, 32 clients",
    "inline.unary32": "service inline, unary, 32 clients",
    "process.unary32": "service process isolation, unary, 32 clients",
    "inline.unary1": "service inline, unary, 1 client",
    "inline.hot32": "service inline, unary, 32 clients on ONE aggregate",
    "baseline_b.raw64": "(b) raw nats-py conditional publishes, 64 in flight",
    "inline.stream": "service inline, SubmitCommands streams",
    "process.stream": "service process isolation, SubmitCommands streams",
}
RATIO_BASE = {
    "inline.unary32": "baseline_a.unary32",
    "process.unary32": "baseline_a.unary32",
    "inline.stream": "baseline_b.raw64",
    "process.stream": "baseline_b.raw64",
}


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    config, _, rate = key.partition(".open_loop.")
    if rate and config.startswith("baseline_a"):
        return f"(a) bare grpclib, open loop {rate}/s offered"
    if rate:
        return f"service {config}, open loop {rate}/s offered"
    return key


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _workload_rows(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys: list[str] = []
    for rnd in rounds:
        keys.extend(k for k in rnd if k not in keys)
    rows = {}
    for key in keys:
        runs = [rnd[key] for rnd in rounds if key in rnd]
        roles = sorted({role for r in runs for role in r.get("cpu_us_per_cmd", {})})
        row: dict[str, Any] = {
            "label": label(key),
            "rounds": len(runs),
            "rate": _median([r["rate"] for r in runs]),
            "rates": [r["rate"] for r in runs],
            "errors": sum(sum(r.get("errors", {}).values()) for r in runs),
            "cpu_us_per_cmd": {
                role: _median([r["cpu_us_per_cmd"][role] for r in runs if "cpu_us_per_cmd" in r])
                for role in roles
            },
            "client_cpu_share": _median(
                [r["client_cpu_s"] / r["elapsed_s"] for r in runs if r.get("elapsed_s")]
            ),
            "loadgen_cpu_us_per_cmd": _median(
                [r["client_cpu_s"] / r["count"] * 1e6 for r in runs if r.get("count")]
            ),
        }
        for q in ("p50", "p99", "p999"):
            row[q] = _median([r["latency_ms"][q] for r in runs if r.get("latency_ms")])
        if any("conflicts" in r for r in runs):
            row["conflicts"] = sum(r.get("conflicts", 0) for r in runs)
        if runs and "offered_rate" in runs[0]:
            row["offered_rate"] = runs[0]["offered_rate"]
        base = RATIO_BASE.get(key)
        if base:
            ratios = [
                rnd[key]["rate"] / rnd[base]["rate"]
                for rnd in rounds
                if key in rnd and base in rnd and rnd[base]["rate"]
            ]
            row["ratio"] = _median(ratios)
            row["ratio_to"] = base
        rows[key] = row
    return rows


def _cold(cold: dict[str, list[list[dict[str, Any]]]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for mode, per_round in cold.items():
        for field, suffix in (("ms", ""), ("server_ms", ", server rehydration")):
            by_label: dict[str, list[float]] = {}
            for reads in per_round:
                for read in reads:
                    if field in read:
                        by_label.setdefault(read["label"], []).append(read[field])
            if by_label:
                ordered = sorted(by_label.items(), key=lambda i: int(i[0]))
                out[mode + suffix] = {lbl: _median(v) for lbl, v in ordered}
    return out


def _memory(memory: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per cached aggregate = RSS growth while the cache fills / cache size; bounded when,
    once the cache is full, RSS grows per new aggregate by at most 10 % of that."""
    if not memory:
        return None
    points = [(int(n), int(rss)) for n, rss in memory["points"]]
    cache = int(memory["cache_size"])
    base = points[0][1]
    full = next((p for p in points if p[0] >= cache), points[-1])
    fill_slope = (full[1] - base) / max(1, full[0])
    half = points[-1][0] / 2
    mid = next((p for p in points if p[0] >= max(half, 2 * cache)), points[-1])
    last = points[-1]
    tail_slope = (last[1] - mid[1]) / max(1, last[0] - mid[0]) if last[0] > mid[0] else None
    return {
        "cache_size": cache,
        "bytes_per_cached_aggregate": round(fill_slope),
        "bytes_per_aggregate_once_full": round(tail_slope) if tail_slope is not None else None,
        "rss_mib": [(n, round(rss / 2**20, 1)) for n, rss in points],
        "bounded": tail_slope is not None and tail_slope <= 0.1 * max(fill_slope, 1.0),
        "watch_buffer": _watch_buffer(memory),
    }


def _watch_buffer(memory: dict[str, Any]) -> dict[str, Any] | None:
    """The RSS growth over the commands that filled the watch hub's resume buffer before
    the series (older results have none: their series shows the buffer filling beside the
    cache, which reads as a cache that is not bounded)."""
    if "watch_buffer_rss" not in memory:
        return None
    before, after = (int(x) for x in memory["watch_buffer_rss"])
    changes = int(memory["watch_buffer_changes"])
    return {
        "changes": changes,
        "rss_mib": round((after - before) / 2**20, 1),
        "bytes_per_change": round((after - before) / max(1, changes)),
    }


def _target(name: str, value: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {
        "target": name,
        "value": value,
        "goal": goal,
        "met": bool(met) if met is not None else None,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    rows = _workload_rows(results["rounds"])
    cold = _cold(results.get("cold", {}))
    memory = _memory(results.get("memory"))
    targets = []
    unary = rows.get("inline.unary32", {}).get("ratio")
    targets.append(
        _target(
            "unary, 32 clients, inline vs (a)",
            unary,
            ">= 0.9x",
            unary >= 0.9 if unary is not None else None,
        )
    )
    stream = rows.get("inline.stream", {})
    rate, ratio = stream.get("rate"), stream.get("ratio")
    targets.append(
        _target(
            "streaming, inline, commands/s",
            rate,
            ">= 5000/s",
            rate >= 5000 if rate is not None else None,
        )
    )
    targets.append(
        _target(
            "streaming, inline vs (b)",
            ratio,
            ">= 0.3x",
            ratio >= 0.3 if ratio is not None else None,
        )
    )
    p99 = rows.get("inline.open_loop.500", {}).get("p99")
    targets.append(
        _target(
            "p99 at 500/s offered, inline (ms)",
            p99,
            "<= 10 ms",
            p99 <= 10 if p99 is not None else None,
        )
    )
    snap = cold.get("snapshot", {})
    if snap:
        small, large = min(snap, key=int), max(snap, key=int)
        a, b = snap[small], snap[large]
        cold_ratio = round(b / a, 2) if a and b else None
        targets.append(
            _target(
                f"cold rehydrate {large} vs {small} events, with snapshots",
                cold_ratio,
                "<= 1.5x",
                cold_ratio <= 1.5 if cold_ratio is not None else None,
            )
        )
    targets.append(
        _target(
            "cache bounded (RSS plateaus)",
            memory["bytes_per_aggregate_once_full"] if memory else None,
            "<= 10% of per-aggregate growth",
            memory["bounded"] if memory else None,
        )
    )
    return {"workloads": rows, "cold_ms": cold, "memory": memory, "targets": targets}


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(summary: dict[str, Any], *, markdown: bool = False) -> str:
    head = [
        "workload",
        "cmd/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "CPU us/cmd: proc",
        "nats",
        "workers",
        "load gen",
        "machine",
        "ratio",
        "errors",
    ]
    body = []
    for _key, row in summary["workloads"].items():
        cpu = row["cpu_us_per_cmd"]
        proc_cpu = cpu.get("service", cpu.get("server", cpu.get("client")))
        # (b) is its own load generator: its "proc" is the publishing process.
        loadgen = None if "client" in cpu else row.get("loadgen_cpu_us_per_cmd")
        parts = [proc_cpu, cpu.get("nats"), cpu.get("workers"), loadgen]
        machine = sum(p for p in parts if p is not None) if proc_cpu is not None else None
        ratio = (
            f"{row['ratio']:.2f}x {row['ratio_to'].split('.')[0][-1]}" if row.get("ratio") else ""
        )
        errors = str(row["errors"])
        if "conflicts" in row:
            errors += f" ({row['conflicts']:.0f} conflicts)"
        body.append(
            [
                row["label"],
                _fmt(row["rate"], ".0f"),
                _fmt(row["p50"], ".2f"),
                _fmt(row["p99"], ".2f"),
                _fmt(row["p999"], ".2f"),
                _fmt(proc_cpu, ".0f"),
                _fmt(cpu.get("nats"), ".0f"),
                _fmt(cpu.get("workers"), ".0f"),
                _fmt(loadgen, ".0f"),
                _fmt(machine, ".0f"),
                ratio,
                errors,
            ]
        )
    lines = _grid(head, body, markdown)
    lines.append("")
    cold = summary["cold_ms"]
    if cold:
        labels = sorted({lbl for per in cold.values() for lbl in per}, key=int)
        c_head = ["cold GetAggregate (ms)", *[f"{lbl} events" for lbl in labels]]
        c_body = [
            [mode.replace("_", " "), *[_fmt(per.get(lbl), ".1f") for lbl in labels]]
            for mode, per in cold.items()
            if per
        ]
        lines += [*_grid(c_head, c_body, markdown), ""]
    memory = summary["memory"]
    if memory:
        lines.append(
            f"memory: {memory['bytes_per_cached_aggregate'] / 1024:.1f} KiB per cached aggregate; "
            f"cache size {memory['cache_size']}: RSS (MiB) by aggregates created "
            + ", ".join(f"{n}: {rss}" for n, rss in memory["rss_mib"])
        )
        if memory.get("watch_buffer"):
            buffer = memory["watch_buffer"]
            lines.append(
                f"before the series, {buffer['changes']} commands on 200 accounts filled the "
                f"watch buffer: +{buffer['rss_mib']} MiB RSS ({buffer['bytes_per_change']} "
                "bytes per command: the buffered changes and what else a run of commands warms)"
            )
        lines.append("")
    t_body = [
        [
            t["target"],
            _fmt(t["value"], ".2f") if t["value"] is not None else "-",
            t["goal"],
            {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
        ]
        for t in summary["targets"]
    ]
    lines += _grid(["target (inline config)", "value", "goal", "result"], t_body, markdown)
    return "\n".join(lines)


def _grid(head: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row) + " |" for row in body]
        return out
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head), *(fmt.format(*row) for row in body)]


def plot(summary: dict[str, Any], path: Path, *, title: str) -> None:
    """p50/p99/p999 against the offered rate, per isolation mode (Agg backend, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    styles = {"inline": "-", "process": "--"}
    colors = {"p50": "tab:blue", "p99": "tab:orange", "p999": "tab:red"}
    for config, style in styles.items():
        rows = sorted(
            (
                row
                for key, row in summary["workloads"].items()
                if key.startswith(f"{config}.open_loop.")
            ),
            key=lambda r: r["offered_rate"],
        )
        if not rows:
            continue
        rates = [r["offered_rate"] for r in rows]
        for q, color in colors.items():
            ax.plot(
                rates, [r[q] for r in rows], style, marker="o", color=color, label=f"{config} {q}"
            )
    for key, row in summary["workloads"].items():
        if key.startswith("baseline_a.open_loop.") and row["p99"] is not None:
            ax.plot(
                [row["offered_rate"]],
                [row["p99"]],
                "s",
                color="black",
                label=f"(a) bare grpclib p99 at {row['offered_rate']:.0f}/s",
            )
    ax.axhline(10, color="grey", linestyle=":", label="target: p99 <= 10 ms at 500/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (commands/s, open loop, latency from the scheduled send)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("result", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    data = json.loads(args.result.read_text())
    summary = summarise(data) if data.get("rounds") else data["summary"]
    print(table(summary, markdown=args.markdown))
    if args.plot:
        plot(summary, args.plot, title=args.result.name)
