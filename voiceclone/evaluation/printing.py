"""Terminal output of `evaluate`: the report's tables, the convergence table and the recent epochs."""

from __future__ import annotations

import math
from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from voiceclone.evaluation.report import MCD_ORDER

CURVE_ROWS = 10  # epochs shown per stage by `watch`
SPLIT_OF = {"val_loss": "val split (held-out clips of training speakers)", "unseen_loss": "unseen split"}


def fmt(x: Any, decimals: int | None = None) -> str:
    """A number to 4 significant digits (or to `decimals` places), '-' when there is none."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if not isinstance(x, float):
        return str(x)
    return f"{x:.{decimals_for(x) if decimals is None else decimals}f}"


def decimals_for(x: float) -> int:
    """Places that show 4 significant digits of x (none for |x| >= 1000, at most 4: the JSON has the rest)."""
    if not math.isfinite(x) or x == 0:
        return 3
    return int(min(4, max(0, 3 - math.floor(math.log10(abs(x))))))


def print_report(report: Mapping[str, Any], console: Console) -> None:
    model, ds = report["model"], report["dataset"]
    enc = report["speaker_encoder"]
    table = Table(title=f"{model['source']} on {ds['path']} [{report['split']}]", title_justify="left")
    # wrap, never cut; the names whole where the width allows (at 80 columns "vocoder f0_rmse_cents" folded
    # into what read as a section named f0_rmse_cents)
    table.add_column("metric", no_wrap=console.width >= 70, overflow="fold")
    for col in ("mean ± std", "median", "n", "unit"):
        table.add_column(col, justify="left" if col == "unit" else "right", overflow="fold")
    table.add_row("[bold]validation[/]")
    for stage, entry in report["validation"].items():
        for name, v in entry.get("losses", {}).items():
            table.add_row(f"  {stage} {name}", fmt(v["value"]), "", str(entry["segments"]), v["unit"])
    sections = [(name, report[name]["metrics"]) for name in ("reconstruction", "copy_synthesis", "zero_shot")]
    independent = report.get("independent", {})
    if independent.get("available"):
        sections += [("independent judges:\nzero_shot", independent["zero_shot"]),
                     ("independent judges:\ncopy_synthesis", independent["copy_synthesis"])]
    for section, rows in sections:
        table.add_section()
        table.add_row(f"[bold]{section}[/]")
        for name, m in rows.items():
            if "share" in m or "value" in m:  # one figure over all pairs, not a summary of per-pair values
                table.add_row(f"  {name}", fmt(m.get("share", m.get("value"))), "", str(m["n"]), m["unit"])
                continue
            places = decimals_for(max(abs(m["mean"]), m["std"])) if m["mean"] is not None else None
            spread = "-" if m["mean"] is None else f"{fmt(m['mean'], places)} ± {fmt(m['std'], places)}"
            table.add_row(f"  {name}", spread, fmt(m["median"], places), str(m["n"]), m["unit"])
    console.print(table)
    console.print(f"speaker encoder: {enc['which']} ({enc['source']}); MCD order {MCD_ORDER}, c0 excluded, "
                  f"frame-aligned; {report['zero_shot']['pairs']} zero-shot pairs", highlight=False)
    if independent.get("available"):
        for what, name in independent["judges"].items():
            console.print(f"independent judge, {what}: {name}", highlight=False, markup=False)
    elif independent:
        console.print(f"independent judges: {independent['reason']}", highlight=False, markup=False)
    print_convergence(report["convergence"], console)


def print_convergence(conv: Mapping[str, Any], console: Console) -> None:
    if not conv.get("available"):
        console.print(f"convergence: not available ({conv['reason']})", highlight=False)
        return
    table = Table(title=f"convergence: {conv['run']}", title_justify="left")
    for col in ("stage", "epochs", "status", "best @ epoch", "monitor", "early stop"):
        # fold, not no_wrap: on a narrow or non-terminal console no_wrap cut cells to "…" and blanked headers
        table.add_column(col, overflow="fold")
    for stage, s in conv["stages"].items():
        best = "-" if s["best_epoch"] is None else f"{fmt(s['best_value'])} @ {s['best_epoch']}"
        stop = "-" if s["stop_epoch"] is None else f"{s['stop_epoch']}" + ("" if s["stopped_early"] else " (if on)")
        table.add_row(stage, str(s["epochs"]), s["status"], best, s["monitor"], stop)
    console.print(table)
    for stage, s in conv["stages"].items():
        console.print(f"{stage}: {s['summary']}", highlight=False, overflow="fold")


def print_curves(convergence: Mapping[str, Any], console: Console) -> None:
    """The last CURVE_ROWS epochs of each stage as numbers: the curve a terminal can show."""
    for stage, rows in convergence["histories"].items():
        best = convergence["assessments"][stage].best_epoch
        # a loss the run never measured (no seen-speaker validation clips, say) is a column of dashes: left out
        losses = [k for k in ("train_loss", "val_loss", "unseen_loss") if any(number(r.get(k)) is not None
                                                                               for r in rows)]
        missing = [SPLIT_OF[k] for k in SPLIT_OF if k not in losses]
        table = Table(title=f"{stage}: last {min(CURVE_ROWS, len(rows))} of {len(rows)} epochs", title_justify="left",
                      caption=f"not measured: the dataset has no {' and no '.join(missing)}" if missing else None)
        for col in ("epoch", *losses, "status"):
            table.add_column(col, justify="right" if col != "status" else "left", overflow="fold")
        for row in rows[-CURVE_ROWS:]:
            mark = " *" if row.get("epoch") == best else ""
            table.add_row(f"{row.get('epoch', '?')}{mark}", *(fmt(number(row.get(k))) for k in losses),
                          str(row.get("status", "")))
        console.print(table)
    console.print("* best epoch", highlight=False)


def epoch_of(row: Mapping[str, Any], position: int) -> int:
    """A row's epoch; rows without one are numbered by position, as the detector numbers them."""
    epoch = row.get("epoch")
    return int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else position


def number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
