"""The `voiceclone` command line: argument parsing and error-to-exit-code mapping, nothing more.

Each command calls one library function, so everything here can also be done from Python.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from voiceclone.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Zero-shot voice cloning: prepare a dataset, train, synthesize, evaluate.")
console = Console(stderr=True)


def user_errors(fn):
    """Turn a UserError into one red line on stderr and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=e.exit_code) from None

    return wrapper


@app.callback()
def _root() -> None:
    """Zero-shot voice cloning: prepare a dataset, train, synthesize, evaluate."""


RecipeOpt = typer.Option("demo", "--recipe", "-r", help="Recipe name in recipes/ or a path to a TOML file.")
SetOpt = typer.Option(None, "--set", help="Override a recipe value, e.g. --set acoustic.train.lr=1e-3 (repeatable).")


@app.command()
@user_errors
def prepare(
    inputs: List[Path] = typer.Argument(..., help="Speaker folders' root(s) (ROOT/<speaker>/**/<file>) or CSV/TSV manifests."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write."),
    recipe: str = RecipeOpt,
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel processes (0 = number of cores)."),
    unseen_speakers: Optional[str] = typer.Option(None, "--unseen-speakers", help="Comma-separated speakers to hold out entirely."),
    strict: bool = typer.Option(False, "--strict/--no-strict", help="Stop at the first bad file instead of skipping it."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Turn folders of speech recordings into a feature dataset (log-mel, F0, energy, audio)."""
    from voiceclone.config import load_recipe
    from voiceclone.data.prepare import prepare as run_prepare

    cfg = load_recipe(recipe, set_ or [])
    named = tuple(s.strip() for s in unseen_speakers.split(",") if s.strip()) if unseen_speakers else None
    run_prepare(inputs, out, cfg, workers=workers, unseen_speakers=named, strict=strict, console=console)


def main() -> None:
    app(prog_name="voiceclone")


if __name__ == "__main__":
    sys.exit(main())
