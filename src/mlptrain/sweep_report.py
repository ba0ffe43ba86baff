"""Gather the runs of a sweep (`python train.py -m ...`) into one table: per job, and mean ± std over seeds."""

import json
import statistics
from pathlib import Path
from typing import Any

from mlptrain.errors import ConfigError
from mlptrain.rundir import stored_config, write_csv, write_text_durably

# Keys that differ between any two runs without being a choice of the sweep.
NOT_SWEPT = {"output_dir", "data.shuffle_seed"}
FIGURES = ("test_acc", "best_val_acc", "wall_time_s")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


def load_jobs(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per job (every folder below sweep_dir with a summary.json), and the keys the sweep varied."""
    summaries = sorted(sweep_dir.rglob("summary.json"), key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])
    if not summaries:
        raise ConfigError(
            f"No summary.json below {sweep_dir}: give the folder of a sweep, e.g. outputs/multirun/<date>/<time>."
        )
    jobs = []
    for summary_path in summaries:
        run_dir = summary_path.parent
        config = _flat(stored_config(run_dir) or {})
        jobs.append({"run_dir": run_dir, "config": config, "summary": json.loads(summary_path.read_text())})
    keys = sorted({k for job in jobs for k in job["config"]} - NOT_SWEPT)
    swept = [k for k in keys if len({json.dumps(job["config"].get(k)) for job in jobs}) > 1]
    return jobs, swept


def job_rows(jobs: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "job": str(job["run_dir"].name),
            **{key: job["config"].get(key) for key in swept},
            "status": job["summary"]["status"],
            **{figure: job["summary"].get(figure) for figure in FIGURES},
        }
        for job in jobs
    ]


def grouped_rows(rows: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    """Jobs that differ only in their seed, folded into one row: mean and standard deviation of each figure."""
    settings = [key for key in swept if key != "seed"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[key]) for key in settings), []).append(row)
    folded = []
    for members in groups.values():
        done = [r for r in members if r["status"] == "completed"]
        entry = {key: members[0][key] for key in settings}
        entry.update(runs=len(members), completed=len(done))
        for figure in FIGURES:
            values = [r[figure] for r in done if r[figure] is not None]
            entry[figure] = statistics.mean(values) if values else None
            entry[f"{figure}_std"] = statistics.stdev(values) if len(values) > 1 else None
        folded.append(entry)
    return folded


def _cell(value: Any, std: Any = None, percent: bool = False) -> str:
    if value is None:
        return "—"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{scale * value:.2f}{unit}"
    return text if std is None else f"{text} ± {scale * std:.2f}{unit}"


def markdown(rows: list[dict[str, Any]], folded: list[dict[str, Any]], swept: list[str]) -> str:
    settings = [key for key in swept if key != "seed"]
    lines = [
        "| " + " | ".join([*settings, "runs", "test acc", "best val acc", "wall time s"]) + " |",
        "|" + "---|" * (len(settings) + 4),
    ]
    for entry in folded:
        cells = [f"{entry[key]:g}" if isinstance(entry[key], float) else str(entry[key]) for key in settings]
        cells.append(f"{entry['completed']}/{entry['runs']}")
        cells += [
            _cell(entry["test_acc"], entry["test_acc_std"], percent=True),
            _cell(entry["best_val_acc"], entry["best_val_acc_std"], percent=True),
            _cell(entry["wall_time_s"], entry["wall_time_s_std"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "Not completed: " + ", ".join(f"job {r['job']} ({r['status']})" for r in failed) + "."]
    return "\n".join(lines) + "\n"


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write sweep_report.md, sweep_jobs.csv and val_acc.png into sweep_dir; return the folded rows."""
    from mlptrain.plots import plot_val_acc_per_job  # matplotlib only when drawing

    jobs, swept = load_jobs(sweep_dir)
    rows = job_rows(jobs, swept)
    folded = grouped_rows(rows, swept)
    write_csv(sweep_dir / "sweep_jobs.csv", rows)
    header = f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs; varied: {', '.join(swept) or 'nothing'}.\n\n"
    write_text_durably(
        sweep_dir / "sweep_report.md",
        header + markdown(rows, folded, swept) + "\n![validation accuracy per epoch](val_acc.png)\n",
    )
    labels = [", ".join(f"{k.split('.')[-1]}={r[k]}" for k in swept) or r["job"] for r in rows]
    plot_val_acc_per_job([job["run_dir"] / "metrics.csv" for job in jobs], labels, sweep_dir / "val_acc.png")
    return folded
