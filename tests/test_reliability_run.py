"""Reliability of a run folder (issue 11): nothing a user trained is ever lost or silently wrong, and
every failure is one line with exit code 2. Each test reproduces one reported defect through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.stages.tasks import AcousticTask
from helpers import ctrl_c_after_step, folder_size, history, one_line_error, set_options, small_filesystem

runner = CliRunner()
FAST = ["acoustic.train.batch_size=4", "acoustic.train.segment_frames=48", "acoustic.train.warmup_steps=10",
        "acoustic.train.lr=3e-3", "vocoder.train.batch_size=4"]


def train_cli(data: Path, run: Path, *args: str, overrides=FAST):
    return runner.invoke(app, ["train", "--data", str(data), "--run", str(run), "--no-early-stop",
                               *set_options(overrides), *args])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def one_epoch(prepared_dataset, tmp_path_factory) -> Path:
    """A run of 2 short acoustic epochs, shared read-only: copy it before changing anything."""
    run = tmp_path_factory.mktemp("rel_run") / "run"
    r = train_cli(prepared_dataset, run, "--epochs", "2")
    assert r.exit_code == 0, r.output
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# --- 1. resume without last.pt -------------------------------------------------------------------


def test_resume_without_last_checkpoint_refuses_and_keeps_best(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    best = (run / "acoustic/best.pt").read_bytes()
    (run / "acoustic/last.pt").unlink()
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    one_line_error(r, "last.pt")
    assert (run / "acoustic/best.pt").read_bytes() == best
    # nor does a fresh start replace a best model it did not make
    (run / "acoustic/history.jsonl").unlink()
    r = train_cli(prepared_dataset, run, "--epochs", "1")
    one_line_error(r, "best.pt")
    assert (run / "acoustic/best.pt").read_bytes() == best


# --- 2. two trainings on one run folder ----------------------------------------------------------


def test_a_second_train_on_the_same_run_folder_is_refused(prepared_dataset, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "voiceclone", "train", "--data", str(prepared_dataset), "--run", str(run),
           "--epochs", "500", "--no-early-stop", *set_options(FAST)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (run / "acoustic/history.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None
        r = train_cli(prepared_dataset, run, "--epochs", "2", "--resume")  # short, in case it is not refused
        one_line_error(r, "another")
        r = train_cli(prepared_dataset, run, "--epochs", "1", "--resume", "--stage", "vocoder")
        one_line_error(r, "another")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    rows = history(run)
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))


# --- 3. torn and piled-up history ----------------------------------------------------------------


def test_a_torn_history_line_is_repaired_on_resume(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    path = run / "acoustic/history.jsonl"
    os.truncate(path, path.stat().st_size - 60)  # a kill in the middle of writing the last row
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert [row["epoch"] for row in history(run)] == [1, 2, 3]
    r = train_cli(prepared_dataset, run, "--epochs", "4", "--resume")
    assert r.exit_code == 0, r.output
    assert [row["epoch"] for row in history(run)] == [1, 2, 3, 4]
    r = runner.invoke(app, ["evaluate", "--run", str(run)])
    assert r.exit_code == 0, r.output


def test_resuming_with_fewer_epochs_than_trained_says_there_is_nothing_to_train(prepared_dataset, one_epoch,
                                                                              tmp_path):
    """`--resume --epochs 1` on a run at epoch 2 showed `epoch 2/1` and trained nothing, without a word."""
    run = copy_run(one_epoch, tmp_path)
    r = train_cli(prepared_dataset, run, "--epochs", "1", "--resume")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "2 epochs are trained already, and --epochs 1 asks for 1: nothing to train" in text, text
    assert [row["epoch"] for row in history(run)] == [1, 2]


def test_rows_of_redone_epochs_do_not_pile_up(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    path = run / "acoustic/history.jsonl"
    rows = history(run)
    # killed three times after writing epoch 3's row and before its checkpoint
    with open(path, "a") as f:
        for _ in range(3):
            f.write(json.dumps({**rows[-1], "epoch": 3}) + "\n")
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert [row["epoch"] for row in history(run)] == [1, 2, 3]


# --- 4. --resume --set ...lr= ----------------------------------------------------------------------


def test_a_learning_rate_set_on_resume_is_applied_and_logged_truly(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume", overrides=FAST + ["acoustic.train.lr=1e-4"])
    assert r.exit_code == 0, r.output
    state = load(run / "acoustic/last.pt")
    groups = [g for opt in state["optimizers"].values() for g in opt["param_groups"]]
    assert all(g["base_lr"] == pytest.approx(1e-4) for g in groups), [g["base_lr"] for g in groups]
    assert history(run)[-1]["lr"] == pytest.approx(groups[0]["lr"], rel=1e-6)
    assert history(run)[-1]["lr"] <= 1e-4


# --- 5. a changed dataset on resume ----------------------------------------------------------------


def test_resume_refuses_a_dataset_whose_speakers_changed(prepared_dataset, synthetic_corpus, one_epoch, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    run = copy_run(one_epoch, tmp_path)
    speakers = json.loads((ds / "speakers.json").read_text())
    trained = sorted(s for s, v in speakers.items() if v["split"] == "train")
    # prepared again with a trained speaker now held out as unseen: `best` would measure a trained voice
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(ds), "--workers", "1",
                            "--unseen-speakers", trained[0]])
    assert r.exit_code == 0, r.output
    r = train_cli(ds, run, "--epochs", "3", "--resume")
    one_line_error(r, "speaker", trained[0])
    assert len(history(run)) == 2


def test_a_stage_for_other_audio_settings_than_the_runs_other_stage_is_refused(synthetic_corpus, one_epoch, tmp_path):
    """The dataset prepared again with other audio settings, then `--stage vocoder` on a run whose acoustic
    model has the old ones: the vocoder trained to the end, and the run could then neither synthesize nor be
    evaluated ('the vocoder was trained with another audio config than the acoustic model')."""
    run = copy_run(one_epoch, tmp_path)
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(tmp_path / "ds40"), "--workers", "1",
                            "--set", "audio.n_mels=40"])
    assert r.exit_code == 0, r.output
    r = train_cli(tmp_path / "ds40", run, "--stage", "vocoder", "--epochs", "1")
    one_line_error(r, str(run / "acoustic" / "best.pt"), "audio.n_mels")
    assert not (run / "vocoder").exists() or not any((run / "vocoder").iterdir())


# --- 6. train_loss of an epoch resumed mid-way -----------------------------------------------------


def test_train_loss_of_an_epoch_resumed_mid_way_is_the_whole_epochs(prepared_dataset, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert train_cli(prepared_dataset, whole, "--epochs", "2").exit_code == 0
    fired = ctrl_c_after_step(monkeypatch, lambda t: t.progress.step == t.steps_per_epoch + 2)  # 2 into epoch 2
    cut = tmp_path / "cut"
    r = train_cli(prepared_dataset, cut, "--epochs", "2")
    assert r.exit_code == 130 and fired, r.output
    r = train_cli(prepared_dataset, cut, "--epochs", "1", "--resume")  # exit 0 and no word, before
    assert r.exit_code == 0 and "1 epochs and part of the next are trained already" in " ".join(r.output.split())
    r = train_cli(prepared_dataset, cut, "--epochs", "2", "--resume")
    assert r.exit_code == 0, r.output
    a, b = history(whole), history(cut)
    assert [row["epoch"] for row in b] == [1, 2] and b[1]["step"] == a[1]["step"]
    # the mean over all the epoch's batches, not the resumed part's sum over all of them
    assert b[1]["train_loss"] == pytest.approx(a[1]["train_loss"], rel=1e-6)


# --- 7. stale temporary checkpoints ----------------------------------------------------------------


def test_stale_temporary_checkpoints_are_removed(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    stale = [run / "acoustic/.last.pt.k2j3h4.tmp", run / "acoustic/.best.pt.a8b9c0.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 100_000)  # a kill during a save leaves these, checkpoint-sized
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in stale)


# --- 9 (trainer side). no finite epoch -------------------------------------------------------------


def test_a_run_without_a_finite_epoch_says_diverged_and_fails(prepared_dataset, tmp_path, monkeypatch):
    task = AcousticTask
    original = task.val_losses

    def blown_up(self, batch):  # a model that blew up: every validation loss is NaN
        return {k: v * float("nan") for k, v in original(self, batch).items()}

    monkeypatch.setattr(task, "val_losses", blown_up)
    run = tmp_path / "run"
    r = train_cli(prepared_dataset, run, "--epochs", "2")
    assert r.exit_code not in (0, 130), r.output
    assert "diverged" in r.output and "Traceback" not in r.output
    assert not (run / "acoustic/best.pt").exists()


# --- 12 (train side). unwritable run folder, full disk ---------------------------------------------


def test_a_run_folder_under_a_file_is_one_line(prepared_dataset, tmp_path):
    (tmp_path / "file").write_text("x")
    r = train_cli(prepared_dataset, tmp_path / "file" / "run", "--epochs", "1")
    one_line_error(r, "file")


def test_a_full_disk_while_training_is_one_line_and_keeps_the_last_checkpoint(prepared_dataset, one_epoch,
                                                                               tmp_path):
    last_size = (one_epoch / "acoustic/last.pt").stat().st_size
    with small_filesystem(tmp_path / "fs", folder_size(one_epoch) + 4096 * 64 + last_size // 2) as fs:
        run = fs / "run"
        shutil.copytree(one_epoch, run)
        before = (run / "acoustic/last.pt").read_bytes()
        r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
        last_line = r.output.strip().splitlines()[-1]  # after the epoch's own lines
        assert "no space left on " + str(fs) in last_line and "last.pt" in last_line, r.output
        assert (run / "acoustic/last.pt").read_bytes() == before
        assert not list((run / "acoustic").glob(".*.tmp"))


# --- 13. malformed checkpoints ---------------------------------------------------------------------


class NotATensor:
    pass


def test_malformed_last_checkpoints_are_one_line(prepared_dataset, one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path)
    (run / "acoustic/last.pt").write_bytes(b"")
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "3", "--resume"), "last.pt")
    # a pickle holding an object: refused, with the whole reason (not a sentence cut in the middle)
    torch.save({"progress": NotATensor()}, run / "acoustic/last.pt")
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    one_line_error(r, "last.pt", "NotATensor")
    assert "weights_only=False" not in r.output  # never advise turning the protection off
    assert r.output.strip().endswith((")", "."))
    # cut short by a kill or a copy, and random bytes: the reason in words, not torch's half sentence
    whole = (one_epoch / "acoustic/last.pt").read_bytes()
    (run / "acoustic/last.pt").write_bytes(whole[: len(whole) // 2])
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "3", "--resume"), "last.pt", "cut short")
    (run / "acoustic/last.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "3", "--resume"), "last.pt", "unreadable data")


def test_a_plain_pickle_as_a_checkpoint_is_refused_without_torchs_warnings(tmp_path):
    """torch warned about the pickle's protocol, two lines, before the one-line refusal."""
    import pickle
    import warnings

    from voiceclone.errors import UserError
    from voiceclone.run import load_checkpoint

    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="last.pt: not a voiceclone"):
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("change", [{"meta": [1]}, {"modules": {"model": [1]}}, {"progress": {"bogus": 1}},
                                    {"rng": {"torch": [1, 2]}}])
def test_a_resume_checkpoint_with_the_keys_but_not_their_content_is_one_line(prepared_dataset, one_epoch, tmp_path,
                                                                              change):
    run = copy_run(one_epoch, tmp_path)
    torch.save({**load(run / "acoustic/last.pt"), **change}, run / "acoustic/last.pt")
    best = (run / "acoustic/best.pt").read_bytes()
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "3", "--resume"), "last.pt",
                   "not a voiceclone resume checkpoint")
    assert (run / "acoustic/best.pt").read_bytes() == best and len(history(run)) == 2


@pytest.mark.parametrize("counter", [{"epoch": -5}, {"best_value": "x"}, {"step": 2.5}, {"lr_scale": float("nan")},
                                     {"epoch_sums": {"mel": "x"}}])
def test_a_resume_checkpoint_whose_counters_are_not_numbers_is_one_line(prepared_dataset, one_epoch, tmp_path,
                                                                        counter):
    """The counters were used only once training ran: a negative epoch, or a best value that was a string, was
    a traceback (exit 1) after an epoch of training."""
    run = copy_run(one_epoch, tmp_path)
    state = load(run / "acoustic/last.pt")
    torch.save({**state, "progress": {**state["progress"], **counter}}, run / "acoustic/last.pt")
    best = (run / "acoustic/best.pt").read_bytes()
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "3", "--resume"), "last.pt",
                   f"progress.{next(iter(counter))}")
    assert (run / "acoustic/best.pt").read_bytes() == best and len(history(run)) == 2


def test_a_best_checkpoint_cut_short_is_named_on_resume(prepared_dataset, one_epoch, tmp_path):
    """A best.pt cut short (a run folder copied in part) was kept while no new epoch beat it, and the resumed run
    said, exit 0, that its best epoch was in it; export then refused it."""
    run = copy_run(one_epoch, tmp_path)
    whole = (run / "acoustic/best.pt").read_bytes()
    (run / "acoustic/best.pt").write_bytes(whole[:1000])
    last = (run / "acoustic/last.pt").read_bytes()
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "2", "--resume"), "best.pt", "cut short",
                   "restore it")
    assert (run / "acoustic/last.pt").read_bytes() == last and len(history(run)) == 2



def test_a_best_checkpoint_gone_is_said_and_the_next_epoch_becomes_the_best(prepared_dataset, one_epoch, tmp_path):
    """Without best.pt the resumed run said its best epoch was in it, and while no later epoch beat that loss
    the run had no model: synthesize said "no trained acoustic model"."""
    run = copy_run(one_epoch, tmp_path)
    (run / "acoustic/best.pt").unlink()
    one_line_error(train_cli(prepared_dataset, run, "--epochs", "2", "--resume"), "best.pt", "missing",
                   "larger --epochs")
    r = train_cli(prepared_dataset, run, "--epochs", "3", "--resume")
    assert r.exit_code == 0 and "missing (it held epoch 2)" in " ".join(r.output.split()), r.output
    assert torch.load(run / "acoustic/best.pt", weights_only=True)["epoch"] == 3

# --- 15. --epochs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_below_one_are_refused(prepared_dataset, tmp_path, epochs):
    one_line_error(train_cli(prepared_dataset, tmp_path / "run", "--epochs", epochs), "--epochs")
    assert not (tmp_path / "run/acoustic/history.jsonl").exists()


@pytest.mark.parametrize("count", ["100000", "-1"])
def test_thread_and_worker_counts_out_of_range_are_one_line(tmp_path, count):
    """--threads 100000 crashed in libgomp (a segfault, exit 139, no message); a negative count was taken
    silently as 0."""
    missing = str(tmp_path / "missing")
    for args in (["train", "--data", missing, "--run", missing, "--threads", count],
                 ["synthesize", "--model", missing, "--source", missing, "--out", missing, "--threads", count],
                 ["evaluate", "--run", missing, "--threads", count],
                 ["prepare", missing, "--out", missing, "--workers", count]):
        one_line_error(runner.invoke(app, args), f"{args[-2]} {count}", "1024")


def test_library_calls_check_thread_and_worker_counts_too(tmp_path):
    """The range was checked in the CLI only: a script calling prepare(workers=100000) would fork as many
    processes, and apply_threads(100000) would reach libgomp."""
    from voiceclone.config import load_recipe
    from voiceclone.data.prepare import prepare
    from voiceclone.errors import UserError
    from voiceclone.threads import apply_threads

    with pytest.raises(UserError, match="workers 100000"):
        prepare([tmp_path / "missing"], tmp_path / "out", load_recipe("demo"), workers=100000)
    with pytest.raises(UserError, match="threads -1"):
        apply_threads(-1)
    assert not (tmp_path / "out").exists()
