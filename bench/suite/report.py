"""Results folder: ``results.json``, ``results.md`` and PNG plots.

The Markdown has one table per workload (a row per system, ratios against
our server), the goals of issue 8 with "met" / "not met" / "not measured",
the micro-benchmark tables, and the machine, versions and command.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

from .common import OK, Result

OURS = "periodic_fast"
OURS_LIB = "periodic_fast (Client/Worker)"
GB = 1e9

Results = dict[str, Any]


def _num(v: Any, fmt: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _get(res: Results, w: str, system: str) -> Result | None:
    r = res.get("workloads", {}).get(w, {}).get(system)
    return r if r and r.get("status") == OK else None


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:,.1f}x" if a / b >= 10 else f"{a / b:,.2f}x"


# -- goals --------------------------------------------------------------------


def goals(res: Results) -> list[dict[str, Any]]:
    """The issue's goals, each with value, target and verdict."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: str, met: bool | None, note: str = "") -> None:
        verdict = "not measured" if met is None else ("met" if met else "not met")
        out.append({"goal": goal, "value": value, "verdict": verdict, "note": note})

    ours = _get(res, "W1", OURS)
    lib = _get(res, "W1", OURS_LIB)
    arq = _get(res, "W1", "arq")
    gmc = _get(res, "W1", "gearman (C tools)")
    if ours and arq:
        x = ours["complete_per_s"] / arq["complete_per_s"]
        note = ""
        if lib:
            y = lib["complete_per_s"] / arq["complete_per_s"]
            note = f"through our Client/Worker: {y:,.1f}x"
        add("W1 completion rate >= 30x arq (poll_delay 0)", f"{x:,.1f}x", x >= 30, note)
    else:
        add("W1 completion rate >= 30x arq (poll_delay 0)", "-", None)
    if ours and gmc:
        x = ours["complete_per_s"] / gmc["complete_per_s"]
        note = ""
        if lib:
            y = lib["complete_per_s"] / gmc["complete_per_s"]
            note = f"through our Client/Worker: {y:,.2f}x"
        add(
            "W1 completion rate above gearmand with its C tools",
            f"{x:,.2f}x",
            x > 1,
            note,
        )
    else:
        add("W1 completion rate above gearmand with its C tools", "-", None)
    o3 = _get(res, "W3", OURS)
    a3 = _get(res, "W3", "arq")
    if o3 and a3 and "bytes_per_job" in o3:
        x = o3["bytes_per_job"] / a3["bytes_per_job"]
        add(
            "W3 memory per scheduled job <= 1/2 of arq's Redis",
            f"{o3['bytes_per_job']:,.0f} B vs {a3['bytes_per_job']:,.0f} B ({x:.2f})",
            x <= 0.5,
        )
    else:
        add("W3 memory per scheduled job <= 1/2 of arq's Redis", "-", None)
    big = None
    if o3:
        big = next((r for r in o3.get("by_size", []) if r["jobs"] >= 10_000_000), None)
    if big and "rss_after" in big:
        add(
            "W3 10M scheduled jobs in <= 3 GB server RSS",
            f"{big['rss_after'] / GB:.2f} GB",
            big["rss_after"] <= 3 * GB,
        )
    else:
        note = "run --full"
        if o3 and "rss_after" in o3:
            proj = o3["rss_before"] + o3["bytes_per_job"] * 10_000_000
            note += f"; projection from {o3['jobs']:,} jobs: {proj / GB:.2f} GB"
        add("W3 10M scheduled jobs in <= 3 GB server RSS", "-", None, note)
    o2 = _get(res, "W2", OURS)
    if o2:
        p99 = o2["lateness_ms_p99"]
        add("W2 lateness p99 <= 50 ms", f"{p99:.1f} ms", p99 <= 50)
    else:
        add("W2 lateness p99 <= 50 ms", "-", None)
    return out


# -- Markdown -----------------------------------------------------------------

Column = tuple[str, Callable[[Result], str]]


def _col(key: str, fmt: str = ",.0f", scale: float = 1.0) -> Callable[[Result], str]:
    def f(r: Result) -> str:
        v = r.get(key)
        return _num(v * scale if isinstance(v, (int, float)) else v, fmt)

    return f


def _table(
    res: Results,
    w: str,
    cols: list[Column],
    ratio_key: str | None,
    higher_better: bool = True,
) -> list[str]:
    rows = res.get("workloads", {}).get(w, {})
    if not rows:
        return ["(not run)", ""]
    head = ["system", *[c[0] for c in cols]]
    ours = _get(res, w, OURS) or _get(res, w, OURS_LIB)
    if ratio_key:
        head.append("periodic_fast advantage")
    head.append("setup")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        if r.get("status") != OK:
            cells = [f"{r['status']}: {r.get('reason', '')}"] + [""] * (len(head) - 2)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            continue
        cells = [c[1](r) for c in cols]
        if ratio_key:
            a = ours.get(ratio_key) if ours else None
            b = r.get(ratio_key)
            cells.append(_ratio(a, b) if higher_better else _ratio(b, a))
        note = r.get("config", "") + (f" ({r['note']})" if r.get("note") else "")
        cells.append(note)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(res: Results, plots: list[str]) -> str:
    """The whole results.md."""
    meta = res.get("meta", {})
    md = [
        "# periodic_fast benchmark suite",
        "",
        f"Command: `{meta.get('command', '')}`  ",
        f"Size: {meta.get('size', '')}; started {meta.get('started', '')}; "
        f"took {meta.get('duration_s', 0):.0f} s; load average before "
        f"{meta.get('load_before', '?')}, after {meta.get('load_after', '?')}",
        "",
        '"periodic_fast advantage" is how many times better our server does than '
        "the row: our rate / its rate for throughput, its figure / ours for "
        "lateness, memory and restart time (above 1: periodic_fast is better). "
        "Each peer's N is in its row; the figures are rates or per-job values.",
        "",
        "## Goals",
        "",
        "| goal | value | verdict | note |",
        "|---|---|---|---|",
    ]
    for g in res.get("goals", []):
        md.append(f"| {g['goal']} | {g['value']} | {g['verdict']} | {g['note']} |")
    md += ["", "## W1 immediate throughput (jobs due now)", ""]
    md += _table(
        res,
        "W1",
        [
            ("jobs", _col("jobs")),
            ("submitted/s", _col("submit_per_s")),
            ("completed/s", _col("complete_per_s")),
        ],
        "complete_per_s",
    )
    md += ["## W2 delayed-dispatch accuracy", ""]
    md += _table(
        res,
        "W2",
        [
            ("jobs", _col("jobs")),
            ("over s", _col("spread_s")),
            ("lateness p50 ms", _col("lateness_ms_p50", ",.1f")),
            ("p99 ms", _col("lateness_ms_p99", ",.1f")),
            ("max ms", _col("lateness_ms_max", ",.1f")),
        ],
        "lateness_ms_p99",
        higher_better=False,
    )
    md += ["## W3 scheduled memory (jobs due in an hour)", ""]
    md += _table(
        res,
        "W3",
        [
            ("jobs", _col("jobs")),
            ("submitted/s", _col("submit_per_s")),
            ("RSS B/job", _col("bytes_per_job", ",.1f")),
            ("used_memory B/job", _col("used_memory_per_job", ",.1f")),
            ("RSS after MB", _col("rss_after", ",.0f", 1e-6)),
        ],
        "bytes_per_job",
        higher_better=False,
    )
    o3 = _get(res, "W3", OURS)
    if o3 and len(o3.get("by_size", [])) > 1:
        md.append("periodic_fast at each size:")
        md.append("")
        for r in o3["by_size"]:
            md.append(
                f"- {r['jobs']:,} jobs: {r.get('bytes_per_job', 0):,.1f} B/job, RSS "
                f"{r.get('rss_after', 0) / 1e6:,.0f} MB, "
                f"{r['submit_per_s']:,.0f} submits/s"
            )
        md.append("")
    md += ["## W4 restart with stored jobs", ""]
    md += _table(
        res,
        "W4",
        [
            ("jobs", _col("jobs")),
            ("listening s", _col("listening_s", ",.2f")),
            ("all jobs back s", _col("restart_s", ",.2f")),
            ("us per job", lambda r: _num(r["restart_s"] / r["jobs"] * 1e6, ",.2f")),
        ],
        None,  # N differs between the rows: no ratio
    )
    md += ["## W5 periodic jobs (every run asks for the next one 1 s later)", ""]
    md += _table(
        res,
        "W5",
        [
            ("jobs", _col("jobs")),
            ("target runs/s", _col("target_per_s")),
            ("runs/s", _col("runs_per_s")),
            ("lateness p50 ms", _col("lateness_ms_p50", ",.1f")),
            ("p99 ms", _col("lateness_ms_p99", ",.1f")),
            ("period drift p50 ms", _col("drift_ms_p50", ",.1f")),
            ("max ms", _col("drift_ms_max", ",.1f")),
        ],
        None,
    )
    micro = res.get("micro", {})
    if micro:
        md += ["## Micro-benchmarks (both twins)", ""]
        for key in ("codec", "wheel"):
            m = micro.get(key, {})
            if m.get("status") == OK:
                md += [f"`{m['command']}`", "", m["markdown"], ""]
            elif m:
                md += [f"{key}: {m.get('status')}: {m.get('reason', '')}", ""]
    if plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    md += ["## Machine and versions", ""]
    for k, v in meta.get("machine", {}).items():
        md.append(f"- {k}: {v}")
    for k, v in meta.get("versions", {}).items():
        md.append(f"- {k}: {v}")
    return "\n".join(md) + "\n"


# -- plots --------------------------------------------------------------------


def plots(res: Results, out_dir: str) -> list[str]:
    """PNG plots (matplotlib, Agg); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    wl = res.get("workloads", {})

    def ok_rows(w: str, key: str) -> list[tuple[str, float]]:
        return [
            (name, float(r[key]))
            for name, r in wl.get(w, {}).items()
            if r.get("status") == OK and isinstance(r.get(key), (int, float))
        ]

    def bars(
        fname: str,
        rows: list[tuple[str, float]],
        title: str,
        xlabel: str,
        log: bool,
        fmt: str,
    ) -> None:
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
        names = [r[0] for r in rows]
        vals = [r[1] for r in rows]
        colors = [
            "tab:blue" if n.startswith("periodic_fast") else "tab:gray" for n in names
        ]
        ax.barh(names, vals, color=colors)
        if log and min(vals) > 0:
            ax.set_xscale("log")
        for i, v in enumerate(vals):
            ax.text(v, i, " " + format(v, fmt), va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.25)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=100)
        plt.close(fig)
        written.append(fname)

    bars(
        "w1_throughput.png",
        ok_rows("W1", "complete_per_s"),
        "W1: jobs completed per second (higher is better)",
        "jobs/s (log)",
        True,
        ",.0f",
    )
    bars(
        "w3_memory.png",
        ok_rows("W3", "bytes_per_job"),
        "W3: server RSS per scheduled job (lower is better)",
        "bytes/job",
        False,
        ",.0f",
    )
    bars(
        "w4_restart.png",
        [
            (f"{name}\n{r['jobs']:,} jobs", float(r["restart_s"]))
            for name, r in wl.get("W4", {}).items()
            if r.get("status") == OK
        ],
        "W4: restart until all stored jobs are back",
        "seconds",
        False,
        ",.2f",
    )
    # W2: p50 / p99 / max per system
    w2 = [(n, r) for n, r in wl.get("W2", {}).items() if r.get("status") == OK]
    if w2:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.25
        for j, (key, label) in enumerate(
            [
                ("lateness_ms_p50", "p50"),
                ("lateness_ms_p99", "p99"),
                ("lateness_ms_max", "max"),
            ]
        ):
            xs = [i + (j - 1) * width for i in range(len(w2))]
            ax.bar(
                xs, [max(0.01, r.get(key) or 0.01) for _, r in w2], width, label=label
            )
        ax.set_xticks(range(len(w2)), [n for n, _ in w2])
        ax.set_yscale("log")
        ax.axhline(50, color="red", lw=0.8, ls="--", label="goal p99 50 ms")
        ax.set_ylabel("lateness ms (log)")
        ax.set_title("W2: delayed-dispatch lateness (lower is better)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "w2_lateness.png"), dpi=100)
        plt.close(fig)
        written.append("w2_lateness.png")
    # W5: achieved vs target runs/s
    w5 = [(n, r) for n, r in wl.get("W5", {}).items() if r.get("status") == OK]
    if w5:
        fig, ax = plt.subplots(figsize=(8, 4))
        pos = list(range(len(w5)))
        ax.bar(
            [x - 0.2 for x in pos],
            [r["target_per_s"] for _, r in w5],
            0.4,
            label="target (jobs x 1/s)",
            color="lightgray",
        )
        ax.bar(
            [x + 0.2 for x in pos],
            [r["runs_per_s"] for _, r in w5],
            0.4,
            label="achieved",
            color="tab:blue",
        )
        ax.set_xticks(pos, [n for n, _ in w5])
        ax.set_yscale("log")
        ax.set_ylabel("runs/s (log)")
        ax.set_title("W5: periodic jobs, sustained runs per second")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "w5_periodic.png"), dpi=100)
        plt.close(fig)
        written.append("w5_periodic.png")
    codec = res.get("micro", {}).get("codec", {})
    crow = [
        (r.get("scenario", "?"), float(r["c/py"].rstrip("x")))
        for r in codec.get("rows", [])
        if r.get("c/py", "").endswith("x")
    ]
    bars(
        "micro_codec.png",
        crow,
        "Codec: Cython twin / pure-Python twin",
        "speed-up (x)",
        False,
        ".1f",
    )
    return written


def write(res: Results, out_dir: str) -> None:
    """results.json, the plots, then results.md (which embeds them)."""
    os.makedirs(out_dir, exist_ok=True)
    res["goals"] = goals(res)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)
    names = plots(res, out_dir)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(res, names))
