"""The console entry point as a real process: exit codes and output survive the fast exit (os._exit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def voiceclone(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "voiceclone", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_short_command_keeps_its_exit_code_and_its_one_error_line(tmp_path):
    done = voiceclone("export", str(tmp_path / "no-run"), "--out", str(tmp_path / "m.safetensors"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "no such run folder" in lines[0], done.stderr
    assert voiceclone("synthesize", "--no-such-option").returncode == 2
    done = voiceclone("--version")
    assert done.returncode == 0 and done.stdout.startswith("voiceclone ")


def test_a_mistyped_option_or_value_is_one_error_line_naming_it():
    """Typer's own usage errors were a usage line, a hint and a box of four lines."""
    for args, words in [(["train", "--data", "d", "--run", "r", "--epochs", "many"], ["--epochs", "integer"]),
                        (["synthesize", "--no-such-option"], ["--no-such-option", "synthesize --help"]),
                        (["train"], ["--data"]), (["no-such-command"], ["no-such-command"])]:
        done = voiceclone(*args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert all(w in lines[0] for w in words), (args, done.stderr)
    done = voiceclone()
    assert done.returncode == 2 and "Commands" in done.stdout + done.stderr  # no arguments: the help


def test_every_option_help_is_printed_whole():
    """Typer renders help as rich markup: an unescaped `[finetune]` vanished from `train --help`."""
    import typer
    from typer.testing import CliRunner

    from voiceclone.cli import app

    runner = CliRunner()
    for name, command in typer.main.get_command(app).commands.items():
        shown = " ".join(runner.invoke(app, [name, "--help"], env={"COLUMNS": "1000"}).output.split())
        for param in command.params:
            if getattr(param, "help", None):
                assert " ".join(param.help.replace("\\[", "[").split()) in shown, (name, param.name)


def test_an_error_line_shows_names_as_written_not_as_emoji(tmp_path):
    # rich turned ":-1:" or ":smile:" in a printed name into an emoji: "--device cuda:-1" read "cuda👎"
    done = voiceclone("export", str(tmp_path / "take:-1:smile:"), "--out", str(tmp_path / "m.safetensors"))
    assert done.returncode == 2 and f"{tmp_path / 'take:-1:smile:'}" in done.stderr, done.stderr


def test_the_console_every_function_defaults_to_prints_names_as_written():
    # prepare, train, synthesize, evaluate called from Python without a console made their own, emoji codes on
    from voiceclone.errors import stderr_console

    console = stderr_console()
    with console.capture() as captured:
        console.print("take:-1:smile:")
    assert captured.get().strip() == "take:-1:smile:"
