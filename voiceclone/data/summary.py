"""What `prepare` says when it is done: the summary it returns and the table it prints."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from voiceclone.data import store
from voiceclone.data.store import SPLITS, Dataset
from voiceclone.errors import first_few


def summary_of(ds: Dataset, started: float, up_to_date: bool, report: dict | None = None) -> dict[str, Any]:
    report = report if report is not None else store.read_json(ds.path / store.REPORT)
    if not isinstance(report, dict):  # report.json only informs: one of another shape is as good as none
        report = {}
    splits = {}
    for name in SPLITS:
        rows = ds.split(name).rows
        splits[name] = {"speakers": len({r["speaker"] for r in rows}), "utterances": len(rows),
                        "hours": round(sum(r["seconds"] for r in rows) / 3600, 4)}
    return {"out": str(ds.path), "fingerprint": ds.fingerprint, "up_to_date": up_to_date,
            "files": report.get("files", 0), "used": report.get("used", 0),
            "processed": 0 if up_to_date else report.get("processed", 0),
            "reused": report.get("reused_from_dataset", 0), "resumed": report.get("resumed_from_cache", 0),
            "skipped": _mapping(report.get("skipped_by_reason")),
            "ignored_non_audio": _mapping(report.get("ignored_non_audio")),
            "speakers": len(ds.speakers), "splits": splits,
            "hours": round(sum(v["hours"] for v in splits.values()), 4),
            "single_utterance_speakers": sorted(k for k, v in ds.speakers.items() if v["utterances"] == 1),
            "speed": {"files": 0, "hours": 0.0, "seconds": 0.0, "workers": 0, "x_real_time": 0.0},
            "wall_seconds": round(time.perf_counter() - started, 2)}


def _mapping(value: Any) -> dict:
    """A table of counts from report.json, or none (an edited or damaged one was an AttributeError traceback)."""
    return value if isinstance(value, dict) else {}


def warn_single_utterance_speakers(summary: dict, console: Console) -> None:
    single = summary["single_utterance_speakers"]
    if single:
        shown = first_few(single, 5)
        console.print(f"{len(single)} speaker(s) have a single utterance ({shown}): training must use it as its "
                      f"own reference, through which the target can leak; give them more recordings, or cut "
                      f"long ones into pieces with a lower --set prepare.max_seconds=N (the demo uses 6)",
                      style="yellow", highlight=False)


def warn_untrainable(summary: dict, console: Console) -> None:
    """Said when the dataset is written, not later by `train`: a train split left with fewer than two voices
    (everyone named in --unseen-speakers, say) can be evaluated on, but trains no zero-shot model."""
    voices = summary["splits"].get("train", {}).get("speakers", 0)
    if voices < 2:
        console.print(f"the train split holds {voices} speaker(s): a zero-shot model needs at least 2 (check "
                      f"--unseen-speakers); one voice can fine-tune a trained model (train --finetune --init-from "
                      f"MODEL), and any split can be evaluated on", style="yellow", highlight=False)


def print_summary(summary: dict, console: Console) -> None:
    table = Table(title=f"dataset {summary['out']}", title_justify="left")
    for col in ("split", "speakers", "utterances", "hours"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, row in summary["splits"].items():
        table.add_row(name, str(row["speakers"]), str(row["utterances"]), f"{row['hours']:.3f}")
    table.add_row("total", str(summary["speakers"]), str(sum(r["utterances"] for r in summary["splits"].values())),
                  f"{summary['hours']:.3f}", style="bold")
    console.print(table)
    if summary["skipped"]:
        skipped = Table(title="files skipped (details in report.json)", title_justify="left")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        for reason, n in summary["skipped"].items():
            skipped.add_row(reason, str(n))
        console.print(skipped)
