"""`train --tensorboard`: scalars beside history.jsonl; without the package, one line and exit 2."""

from __future__ import annotations

import math
import sys

import pytest
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.train import tboard


def test_missing_package_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--run", str(tmp_path / "run"),
                                      "--tensorboard"])
    assert result.exit_code == 2
    out = result.output.strip()
    assert "pip install 'voiceclone[tensorboard]'" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_rows_become_scalars_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = tboard.Scalars(tmp_path / "acoustic", "acoustic")
    for epoch, loss in ((1, 1.0), (2, 0.5)):
        writer.write({"epoch": epoch, "train_loss": loss, "unseen_loss": None, "val_loss": math.nan,
                      "status": "improving", "lr": 1e-3, "lr_drops": 0})
    writer.close()
    acc = EventAccumulator(str(tmp_path / "acoustic" / tboard.FOLDER))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"acoustic/train_loss", "acoustic/lr", "acoustic/lr_drops"} <= tags
    assert "acoustic/val_loss" not in tags and "acoustic/status" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("acoustic/train_loss")] == [(1, 1.0), (2, 0.5)]
