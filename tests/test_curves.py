"""Reading histories (including a run killed mid-write) and drawing the curves PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from voiceclone.config import ConvergenceConfig
from voiceclone.evaluation.convergence import assess
from voiceclone.evaluation.curves import plot_curves
from voiceclone.run import read_history, run_histories
from voiceclone.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rows(n: int, scale: float = 1.0) -> list[dict]:
    return [{"epoch": e, "step": 10 * e, "train_loss": scale * 0.8 / e, "val_loss": scale * (0.5 + 0.5 / e),
             "unseen_loss": scale * (0.6 + 0.5 / e)} for e in range(1, n + 1)]


def write_history(path: Path, history: list[dict], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in history) + tail)
    return path


def test_read_history_round_trip_with_nan(tmp_path):
    history = rows(4)
    history[2]["train_loss"] = math.nan
    got = read_history(write_history(tmp_path / "history.jsonl", history))
    assert len(got) == 4 and got[0] == history[0]
    assert math.isnan(got[2]["train_loss"])


def test_truncated_last_line_is_dropped(tmp_path):
    path = write_history(tmp_path / "history.jsonl", rows(3), tail='{"epoch": 4, "train_lo')
    assert [r["epoch"] for r in read_history(path)] == [1, 2, 3]
    # a multi-byte character cut in half is a truncation too
    path.write_bytes(path.read_bytes()[: -len('{"epoch": 4, "train_lo')] + '{"note": "é'.encode()[:-1])
    assert len(read_history(path)) == 3


def test_corruption_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(UserError, match="history.jsonl:2"):
        read_history(path)


def test_a_number_no_float_holds_is_named_with_its_line(tmp_path):
    # JSON reads a hand-edited 1 with 400 zeros as an int: evaluate ended in "OverflowError: int too large"
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1, "unseen_loss": 0.5}\n{"epoch": 2, "unseen_loss": 1' + "0" * 400 + '}\n')
    with pytest.raises(UserError, match="history.jsonl:2: unseen_loss"):
        read_history(path)


def test_missing_history_names_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl"):
        read_history(tmp_path / "nope.jsonl")


def test_run_histories_finds_the_stages(tmp_path):
    write_history(tmp_path / "vocoder" / "history.jsonl", rows(3))
    write_history(tmp_path / "acoustic" / "history.jsonl", rows(5))
    (tmp_path / "logs").mkdir()
    histories = run_histories(tmp_path)
    assert list(histories) == ["acoustic", "vocoder"]
    assert len(histories["acoustic"]) == 5 and len(histories["vocoder"]) == 3
    assert list(run_histories(tmp_path / "vocoder")) == ["vocoder"]


def test_run_without_history_is_a_user_error(tmp_path):
    (tmp_path / "acoustic").mkdir()
    with pytest.raises(UserError, match="no training history found"):
        run_histories(tmp_path)
    with pytest.raises(UserError, match="run folder not found"):
        run_histories(tmp_path / "missing")


def test_a_stage_config_json_that_is_not_utf8_is_one_line(tmp_path):
    """`evaluate --run` reads each stage's config.json for its convergence settings: one saved in another
    encoding (or damaged) was a UnicodeDecodeError traceback with exit code 1."""
    from typer.testing import CliRunner

    from helpers import one_line_error
    from voiceclone.cli import app

    write_history(tmp_path / "acoustic" / "history.jsonl", rows(3))
    (tmp_path / "acoustic" / "config.json").write_bytes('{"name": "d\xe9mo"}'.encode("latin-1"))
    one_line_error(CliRunner().invoke(app, ["evaluate", "--run", str(tmp_path)]), "config.json")


def test_plot_curves_writes_a_png(tmp_path):
    cfg = ConvergenceConfig()
    acoustic = rows(12)
    vocoder = [{k: v for k, v in r.items() if k != "unseen_loss"} for r in rows(6, scale=40.0)]
    vocoder[0]["train_loss"] = 4000.0  # spans far more than 10x: drawn on a log axis
    histories = {"acoustic": acoustic, "vocoder": vocoder}
    assessments = {stage: assess(h, cfg) for stage, h in histories.items()}
    out = plot_curves(histories, assessments, tmp_path / "report" / "curves.png",
                      early_stop_epochs={"acoustic": 10, "vocoder": None})
    assert out == tmp_path / "report" / "curves.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def test_plot_curves_handles_an_empty_stage_and_no_assessment(tmp_path):
    out = plot_curves({"acoustic": []}, {}, tmp_path / "c.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        plot_curves({}, {}, tmp_path / "none.png")


def test_a_plot_that_does_not_fit_keeps_the_previous_one(tmp_path):
    """savefig wrote over the path: on a full disk the last curves.png was lost and a truncated PNG took its
    name."""
    import contextlib

    from helpers import small_filesystem

    with small_filesystem(tmp_path / "fs", 64 * 1024) as fs:
        (fs / "curves.png").write_bytes(PNG_SIGNATURE + b"previous")
        with open(fs / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(UserError, match="no space left .* writing .*curves.png"):
            plot_curves({"acoustic": rows(12), "vocoder": rows(12)}, {}, fs / "curves.png")
        assert (fs / "curves.png").read_bytes() == PNG_SIGNATURE + b"previous"
        assert sorted(p.name for p in fs.iterdir()) == ["curves.png", "filler"]
