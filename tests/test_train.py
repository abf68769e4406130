"""The training engine and the zero-shot acoustic model, on generated voices, on CPU."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.config import load_recipe
from voiceclone.data.prepare import prepare
from voiceclone.data.store import Dataset
from voiceclone.run import load_checkpoint
from voiceclone.stages.tasks import AcousticTask
from voiceclone.train.command import train
from voiceclone.train.loop import lr_factor
from helpers import ctrl_c_after_step, history

QUIET = Console(quiet=True)
TRAIN_THREADS = 2  # fixed, so the shared trained model is the same on every machine
FAST = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=48", "acoustic.train.warmup_steps=10",
        "acoustic.train.lr=3e-3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_dataset) -> Path:
    """10 synthetic voices (1 held out as unseen), 8 utterances each, prepared with the demo recipe."""
    return make_dataset(tmp_path_factory.mktemp("train"), speakers=10, utterances=8, seconds=1.6, seed=3)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """One run of 30 short epochs, shared by the tests that need a trained model.

    On a fixed number of threads (the seeds are the recipe's): intra-op threads change the order of float
    sums, and 30 epochs turn that into another model, so what it learned would depend on the machine."""
    run = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        train(dataset, run, overrides=FAST, epochs=30, early_stop=False, console=QUIET)
    finally:
        torch.set_num_threads(threads)
    return run


def test_lr_schedule_is_a_pure_function_of_the_step():
    assert lr_factor(1, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 10, 100, 0.1) < 1.0
    # half-way through the decay the cosine is at its midpoint, and the decay never rises
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    decay = [lr_factor(k, 10, 100, 0.1) for k in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_training_lowers_unseen_loss_and_writes_history(trained):
    rows = history(trained)
    assert [r["epoch"] for r in rows] == list(range(1, 31))
    for key in ("epoch", "step", "train_loss", "val_loss", "unseen_loss", "lr", "seconds", "samples_per_second",
                "train_mel", "train_speaker", "status"):
        assert key in rows[-1], key
    assert min(r["unseen_loss"] for r in rows) < 0.5 * rows[0]["unseen_loss"], [r["unseen_loss"] for r in rows]
    assert (trained / "acoustic/best.pt").is_file() and (trained / "acoustic/last.pt").is_file()
    assert json.loads((trained / "acoustic/config.json").read_text())["audio"]["sample_rate"] == 16000
    best = load_checkpoint(trained / "acoustic/best.pt")
    assert best["value"] == pytest.approx(min(r["unseen_loss"] for r in rows))


def test_the_model_really_uses_the_reference(dataset, trained):
    """Same source, two reference speakers: outputs differ, and each is nearer (by the model's own speaker
    encoder) to the reference it was made from."""
    ds = Dataset.open(dataset)
    task = AcousticTask(ds.recipe, ds, torch.device("cpu"))
    task.model.load_state_dict(load_checkpoint(trained / "acoustic/best.pt")["modules"]["model"])
    model = task.model.eval()
    unseen, train_split = ds.split("unseen"), ds.split("train")
    by_speaker: dict[str, list[int]] = {}
    for i in range(len(train_split)):
        by_speaker.setdefault(train_split.speaker(i), []).append(i)
    names = sorted(by_speaker)
    lo, hi = names[0], names[-1]  # the lowest and highest synthetic registers: clearly different voices

    def mel(split, i):
        return torch.from_numpy(split.mel(i).astype("float32")).T

    refs = [model.embed([mel(train_split, i) for i in by_speaker[spk][:3]]) for spk in (lo, hi)]
    cos = torch.nn.functional.cosine_similarity
    margins = []  # per output: similarity to its own reference minus to the other one
    with torch.no_grad():
        for src in range(0, len(unseen), 3):  # several sources of the held-out speakers
            source_mel = mel(unseen, src)
            f0, energy = torch.tensor(unseen.f0(src)), torch.tensor(unseen.energy(src))
            outs = [model.convert(source_mel, f0, energy, ref) for ref in refs]
            assert (outs[0] - outs[1]).abs().mean() > 0.2  # log-mel units: clearly different spectra
            emb = [model.embed([o]) for o in outs]
            margins += [float(cos(emb[k], refs[k], dim=0) - cos(emb[k], refs[1 - k], dim=0)) for k in (0, 1)]
    # one output of a tiny model may land a hair nearer the other voice (0.77 vs 0.79 was seen); on
    # average, and by a clear margin, outputs follow their reference, and none goes far the wrong way
    assert sum(margins) / len(margins) > 0.02 and min(margins) > -0.1, [round(m, 3) for m in margins]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(dataset, tmp_path, request, ema):
    # epoch 2 and 3 steps follow the cosine decay; with a weight average, validation reads the average, so it
    # must be carried over exactly too
    overrides = FAST + ["acoustic.train.warmup_steps=3", f"acoustic.train.ema={ema}"]
    train(dataset, tmp_path / "a", overrides=overrides, epochs=3, early_stop=False, console=QUIET)
    request.getfixturevalue("interrupt_after_first_epoch")  # a Ctrl-C at the end of epoch 1
    r = train(dataset, tmp_path / "b", overrides=overrides, epochs=3, early_stop=False, console=QUIET)
    assert r["acoustic"]["interrupted"] and r["acoustic"]["epochs"] == 1
    train(dataset, tmp_path / "b", overrides=overrides, epochs=3, resume=True, early_stop=False, console=QUIET)
    a, b = history(tmp_path / "a"), history(tmp_path / "b")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "unseen_loss", "step"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (key, ra["epoch"])


def test_resume_mid_epoch_with_augmentation_equals_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    # the augmentation draws from torch's generator: the resumed run must not draw once more than the stopped
    # one did (the data loader takes its workers' seed from it when an epoch's batches begin)
    overrides = FAST + ["acoustic.augment=true"]
    train(dataset, tmp_path / "a", overrides=overrides, epochs=2, early_stop=False, console=QUIET)
    fired = ctrl_c_after_step(monkeypatch, lambda t: t.progress.step == t.steps_per_epoch + 1)  # 1 into epoch 2
    r = train(dataset, tmp_path / "b", overrides=overrides, epochs=2, early_stop=False, console=QUIET)
    assert fired and r["acoustic"]["interrupted"] and r["acoustic"]["epochs"] == 1
    train(dataset, tmp_path / "b", overrides=overrides, epochs=2, resume=True, early_stop=False, console=QUIET)
    a, b = history(tmp_path / "a"), history(tmp_path / "b")
    assert [r["epoch"] for r in b] == [1, 2]
    for key in ("train_loss", "val_loss", "unseen_loss", "step"):
        assert a[1][key] == pytest.approx(b[1][key], rel=1e-6, abs=1e-7), key


def test_a_run_resumed_mid_epoch_where_that_epoch_now_has_fewer_batches_closes_it(dataset, tmp_path, monkeypatch):
    # stopped 3 batches of 2 into epoch 1, resumed with batches of 32: the epoch now holds 1, so nothing of it is
    # left (a dataset prepared again with fewer utterances does the same); it was an UnboundLocalError traceback
    fired = ctrl_c_after_step(monkeypatch, lambda t: t.progress.step == 3)
    r = train(dataset, tmp_path / "r", overrides=FAST + ["acoustic.train.batch_size=2"], epochs=2, early_stop=False,
              console=QUIET)
    assert fired and r["acoustic"]["interrupted"] and r["acoustic"]["epochs"] == 0
    r = train(dataset, tmp_path / "r", overrides=FAST + ["acoustic.train.batch_size=32"], epochs=2, resume=True,
              early_stop=False, console=QUIET)
    assert not r["acoustic"]["interrupted"] and r["acoustic"]["epochs"] == 2
    rows = history(tmp_path / "r")
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 3), (2, 4)]
    assert rows[0]["lr"] == pytest.approx(3e-3 * 3 / 10)  # the rate of its last step (warmup of 10)


def test_a_run_resumed_mid_epoch_with_another_batch_size_goes_on_from_the_same_item(dataset, tmp_path,
                                                                                      monkeypatch):
    # 3 batches of 2 (6 items) were taken as 3 batches of 4 (12): the items 6-11 of that epoch never trained
    fired = ctrl_c_after_step(monkeypatch, lambda t: t.progress.step == 3)
    train(dataset, tmp_path / "r", overrides=FAST + ["acoustic.train.batch_size=2"], epochs=2, early_stop=False,
          console=QUIET)
    assert fired
    console = Console(record=True, width=200)
    r = train(dataset, tmp_path / "r", overrides=FAST + ["acoustic.train.batch_size=4"], epochs=2, resume=True,
              early_stop=False, console=console)
    assert r["acoustic"]["epochs"] == 2 and "had 6 items in batches of 2" in console.export_text()
    rows = history(tmp_path / "r")
    per_epoch = rows[1]["step"] - rows[0]["step"]
    assert rows[0]["step"] == 3 + per_epoch - 2  # 6 items: 2 batches of 4 counted done (rounded up), not 3


def test_early_stopping_on_a_plateau_restores_the_best(dataset, tmp_path):
    # a learning rate of ~0 makes every epoch the same: a perfect plateau
    overrides = FAST + ["acoustic.train.lr=1e-12", "convergence.patience=2", "convergence.window=2"]
    results = train(dataset, tmp_path / "run", overrides=overrides, epochs=20, console=QUIET)
    r = results["acoustic"]
    assert r["early_stopped"] and r["epochs"] < 20
    assert r["assessment"].status == "converged"
    rows = history(tmp_path / "run")
    assert rows[-1]["status"] == "converged"
    # reduce-on-plateau (default 2 drops of x0.5) before the stop: the history shows each drop and its rate
    drops = [row["lr_drops"] for row in rows]
    assert drops == sorted(drops) and drops[0] == 0 and drops[-1] == 2
    first_at = {k: next(row for row in rows if row["lr_drops"] == k) for k in (1, 2)}
    before = {k: next(row for row in reversed(rows) if row["lr_drops"] == k - 1) for k in (1, 2)}
    for k in (1, 2):  # the cosine moves little over one epoch; the drop halves the rate
        assert first_at[k]["lr"] == pytest.approx(0.5 * before[k]["lr"], rel=0.1)


def test_no_lr_drops_stops_on_the_first_plateau(dataset, tmp_path):
    overrides = FAST + ["acoustic.train.lr=1e-12", "convergence.patience=2", "convergence.window=2",
                        "convergence.max_lr_drops=0"]
    r = train(dataset, tmp_path / "run", overrides=overrides, epochs=20, console=QUIET)["acoustic"]
    assert r["early_stopped"] and {row["lr_drops"] for row in history(tmp_path / "run")} == {0}


def test_non_finite_losses_are_skipped_then_the_last_good_state_is_reloaded(dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = AcousticTask.losses

    def poisoned(self, group, batch, step):
        out = original(self, group, batch, step)
        calls["n"] += 1
        if 3 <= calls["n"] <= 9:  # 7 NaN batches in a row: skipped, and a reload after max_bad_steps (5)
            out["mel"] = out["mel"] * float("nan")
        return out

    monkeypatch.setattr(AcousticTask, "losses", poisoned)
    train(dataset, tmp_path / "run", overrides=FAST, epochs=2, early_stop=False, console=QUIET)
    rows = history(tmp_path / "run")
    assert rows[-1]["nonfinite_skipped"] == 7
    state = load_checkpoint(tmp_path / "run/acoustic/last.pt")
    assert state["progress"]["lr_scale"] == pytest.approx(0.5)
    assert all(torch.isfinite(t).all() for t in state["modules"]["model"].values())
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_skipped_batches_do_not_lower_the_epoch_train_loss(dataset, tmp_path, monkeypatch):
    """An epoch's train_loss is the mean over the batches trained: skipped ones were divided in as zeros, so
    an epoch with half its batches skipped logged half its loss, a fall that read as progress (or, beside a
    rising validation loss, as overfitting)."""
    original = AcousticTask.losses
    trained_mel: list[float] = []

    def poisoned(self, group, batch, step):
        out = original(self, group, batch, step)
        if step in (9, 10, 11):  # three batches of epoch 2 (steps 8-14) skipped, too few for a reload
            out["mel"] = out["mel"] * float("nan")
        elif 8 <= step <= 14:
            trained_mel.append(float(out["mel"].detach()))
        return out

    monkeypatch.setattr(AcousticTask, "losses", poisoned)
    train(dataset, tmp_path / "run", overrides=FAST, epochs=2, early_stop=False, console=QUIET)
    rows = history(tmp_path / "run")
    assert rows[1]["nonfinite_skipped"] == 3 and len(trained_mel) == 4
    assert rows[1]["train_loss"] == pytest.approx(sum(trained_mel) / 4)
    assert rows[1]["train_mel"] == pytest.approx(sum(trained_mel) / 4)


def test_an_epoch_of_only_non_finite_losses_is_diverged_and_stops(dataset, tmp_path, monkeypatch):
    original = AcousticTask.losses

    def poisoned(self, group, batch, step):
        out = original(self, group, batch, step)
        if step > 7:  # everything after the first epoch (7 steps) is NaN
            out["mel"] = out["mel"] * float("nan")
        return out

    monkeypatch.setattr(AcousticTask, "losses", poisoned)
    results = train(dataset, tmp_path / "run", overrides=FAST + ["acoustic.train.max_bad_steps=100"], epochs=5,
                    console=QUIET)
    rows = history(tmp_path / "run")
    assert rows[1]["train_loss"] == "nan"  # strict JSON: the string, which float() reads back
    assert rows[1]["status"] == "diverged"
    assert results["acoustic"]["early_stopped"] and results["acoustic"]["epochs"] == 2
    best = load_checkpoint(tmp_path / "run/acoustic/best.pt")
    assert best["epoch"] == 1 and all(torch.isfinite(t).all() for t in best["modules"]["model"].values())


def test_bad_inputs_are_one_line_errors_with_exit_code_2(dataset, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--run", str(tmp_path / "r")])
    assert r.exit_code == 2 and "nope" in r.output
    # a dataset made with another audio config than the named recipe
    r = runner.invoke(app, ["train", "--data", str(dataset), "--run", str(tmp_path / "r"), "--recipe", "vctk"])
    assert r.exit_code == 2 and "audio" in r.output
    # an existing run is never overwritten without --resume
    train(dataset, tmp_path / "r", overrides=FAST, epochs=1, early_stop=False, console=QUIET)
    before = (tmp_path / "r/acoustic/last.pt").read_bytes()
    r = runner.invoke(app, ["train", "--data", str(dataset), "--run", str(tmp_path / "r"), "--epochs", "1"])
    assert r.exit_code == 2 and "--resume" in r.output
    assert (tmp_path / "r/acoustic/last.pt").read_bytes() == before
    # resuming with a different model is refused
    r = runner.invoke(app, ["train", "--data", str(dataset), "--run", str(tmp_path / "r"), "--resume",
                            "--set", "acoustic.model.size=base"])
    assert r.exit_code == 2 and "other settings" in r.output
    # too few speakers for speaker-disjoint validation
    from voiceclone.synthetic import write_corpus

    write_corpus(tmp_path / "two", n_speakers=2, utterances=4, seconds=1.0, sample_rate=16000)
    prepare([tmp_path / "two"], tmp_path / "ds2", load_recipe("demo"), workers=1, console=QUIET)
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "ds2"), "--run", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "speaker" in r.output and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output
    # with the held-out share set to 0, the cause is named, not "at least 3 speakers" for 4 of them
    write_corpus(tmp_path / "four", n_speakers=4, utterances=4, seconds=1.0, sample_rate=16000)
    prepare([tmp_path / "four"], tmp_path / "ds4", load_recipe("demo", ["prepare.unseen_fraction=0"]), workers=1,
            console=QUIET)
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "ds4"), "--run", str(tmp_path / "r4")])
    assert r.exit_code == 2 and "prepare.unseen_fraction = 0" in " ".join(r.output.split()), r.output


def test_the_closing_line_names_the_monitored_loss_and_the_best_checkpoint(dataset, tmp_path):
    """It read 'best epoch 1 (1.6022)': a number with no name, and no word of where the model went."""
    threads = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["train", "--data", str(dataset), "--run", str(tmp_path / "r"), "--epochs", "1",
                                     "--threads", "1", *(a for o in FAST for a in ("--set", o))])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    shown = "".join(r.output.split())
    assert "acoustic:bestepoch1(unseen_loss" in shown and str(tmp_path / "r" / "acoustic" / "best.pt") in shown


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "voiceclone", *args]


def test_ctrl_c_saves_and_prints_how_to_resume(dataset, tmp_path):
    run = tmp_path / "run"
    cmd = _cli("train", "--data", str(dataset), "--run", str(run), "--epochs", "200", "--no-early-stop",
               "--threads", "1", *sum((["--set", o] for o in FAST), []))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "acoustic/history.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out and "Traceback" not in out
    assert "--threads 1" in " ".join(out.split())  # an exact resume needs the same thread count
    state = load_checkpoint(run / "acoustic/last.pt")
    assert state["progress"]["step"] >= 1
    r = subprocess.run(cmd[:-2 * len(FAST)] + sum((["--set", o] for o in FAST), []) + ["--resume", "--epochs",
                       str(state["progress"]["epoch"] + 1)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert history(run)[-1]["epoch"] == state["progress"]["epoch"] + 1


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals to hang up here")
def test_a_closed_terminal_saves_both_models_mid_epoch(dataset, tmp_path):
    """The SSH connection drops, or the terminal window is closed: a hang-up (SIGHUP) used to end the process
    at once, with the acoustic model's epoch unsaved. It is now a stop like Ctrl-C, and the lost terminal
    (where a write fails with EIO) no longer breaks the way out. Run in a real pseudo-terminal, closed."""
    import select

    run = tmp_path / "run"
    voc = ["vocoder.train.batch_size=4", "vocoder.train.segment_frames=16", "vocoder.train.warmup_steps=2"]
    pid, terminal = _in_a_terminal(_cli("train", "--data", str(dataset), "--run", str(run), "--stage", "all",
                                        "--epochs", "500", "--no-early-stop", "--threads", "2",
                                        *sum((["--set", o] for o in FAST + voc), [])))
    deadline = time.time() + 120
    while not (run / "vocoder/history.jsonl").is_file() and time.time() < deadline:
        if select.select([terminal], [], [], 0.2)[0]:
            os.read(terminal, 65536)  # keep the terminal drained, as a window would
    os.close(terminal)  # the hang-up
    os.kill(pid, signal.SIGTERM)  # as logind sends a closed session's processes: no "now" while saving
    assert _exit_code(pid) == 130
    for stage in ("acoustic", "vocoder"):
        saved = load_checkpoint(run / stage / "last.pt")["progress"]
        assert saved["step"] >= 1 and saved["epoch"] == len(history(run, stage)), stage  # nothing finished lost


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals to hang up here")
def test_only_a_second_ctrl_c_means_now_and_a_hang_up_stays_ignored_after():
    """A hang-up, then the SIGTERM a closed session's processes get: the step still finishes and saves (a
    second signal used to raise KeyboardInterrupt mid-save). A second Ctrl-C still means now. Once the
    terminal is gone, later hang-ups are ignored, between the stages too."""
    from voiceclone.train.distributed import StopRequest

    before = signal.getsignal(signal.SIGHUP)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)  # the handlers run between bytecodes
            assert stop.requested
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals to hang up here")
def test_a_hang_up_sent_by_hand_stops_and_still_shows_how_to_resume(dataset, tmp_path):
    """`kill -HUP` with the terminal still open: the output stays on it, the resume line included."""
    import select

    run = tmp_path / "run"
    pid, terminal = _in_a_terminal(_cli("train", "--data", str(dataset), "--run", str(run), "--epochs", "500",
                                        "--no-early-stop", "--threads", "1", *sum((["--set", o] for o in FAST), [])))
    shown, sent, deadline = b"", False, time.time() + 180
    while time.time() < deadline:
        if not sent and (run / "acoustic/history.jsonl").is_file():
            os.kill(pid, signal.SIGHUP)
            sent = True
        if select.select([terminal], [], [], 0.2)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the child has ended: its side of the terminal is closed
                break
            if not chunk:
                break
            shown += chunk
    os.close(terminal)
    assert _exit_code(pid) == 130
    assert b"Resume with" in shown and b"--resume" in shown, shown[-2000:]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals to hang up here")
def test_under_nohup_a_closed_terminal_does_not_stop_training(dataset, tmp_path):
    """nohup ignores SIGHUP so that a job outlives its terminal; training keeps that choice."""
    run = tmp_path / "run"
    pid, terminal = _in_a_terminal(_cli("train", "--data", str(dataset), "--run", str(run), "--epochs", "500",
                                        "--no-early-stop", "--threads", "1", *sum((["--set", o] for o in FAST), [])),
                                   nohup_out=tmp_path / "nohup.out")
    deadline = time.time() + 120
    while not (run / "acoustic/history.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    os.close(terminal)
    rows, deadline = len(history(run)), time.time() + 120
    while len(history(run)) < rows + 2 and time.time() < deadline:  # two more epochs after the hang-up
        time.sleep(0.2)
    ended, status = os.waitpid(pid, os.WNOHANG)
    assert not ended and len(history(run)) >= rows + 2, (tmp_path / "nohup.out").read_text()[-2000:]
    os.kill(pid, signal.SIGINT)  # and Ctrl-C still stops it, saved
    assert _exit_code(pid) == 130


def _in_a_terminal(cmd: list[str], nohup_out: Path | None = None) -> tuple[int, int]:
    """Start `cmd` in a session of its own whose controlling terminal is a new pseudo-terminal:
    (pid, the terminal's master end; closing it hangs the terminal up). With `nohup_out`, as `nohup` starts
    it: SIGHUP ignored, output to that file."""
    import pty

    pid, terminal = pty.fork()
    if pid == 0:
        try:
            if nohup_out is not None:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                out = os.open(nohup_out, os.O_WRONLY | os.O_CREAT)
                os.dup2(out, 1)
                os.dup2(out, 2)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)  # never back into pytest
    return pid, terminal


def _exit_code(pid: int, seconds: float = 120.0) -> int:
    """The exit code of child `pid`, killed (and the test failed) if it has not ended within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the training process did not end within {seconds:.0f} s")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_run_with_gloo(dataset, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--nproc_per_node=2", "--master_port=29517", "-m", "voiceclone", "train", "--data",
           str(dataset), "--run-dir", str(run), "--epochs", "2", "--no-early-stop", "--device", "cpu",
           *sum((["--set", o] for o in FAST), [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = history(run)
    assert [row["epoch"] for row in rows] == [1, 2]  # rank 0 alone wrote: one row per epoch
    single = Dataset.open(dataset)
    steps_single = (len(single.split("train")) // 8)
    assert rows[0]["step"] == (len(single.split("train")) // 2) // 8  # each rank takes half of every epoch
    assert rows[0]["step"] < steps_single
    assert all(math.isfinite(row["unseen_loss"]) for row in rows)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_a_stop_sent_to_one_ddp_rank_stops_every_rank_saved(dataset, tmp_path):
    """A signal reaches torchrun's ranks one by one: the rank that stopped alone used to exit while the other
    waited in the next step's gradient exchange, which ended in a gloo traceback and an unsaved epoch."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--nproc_per_node=2", "--master_port=29519", "-m", "voiceclone", "train", "--data",
           str(dataset), "--run-dir", str(run), "--epochs", "500", "--no-early-stop", "--device", "cpu",
           *sum((["--set", o] for o in FAST), [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ranks: list[str] = []
    try:
        deadline = time.time() + 120
        while not (run / "acoustic/history.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(max(ranks, key=int)), signal.SIGTERM)  # the rank started last: rank 1
        out, _ = proc.communicate(timeout=120)
    finally:
        for pid in [proc.pid, *map(int, ranks)]:  # torchrun starts each rank in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
    assert "Stopped " in out and "Resume with" in out, out[-3000:]
    assert "Connection closed by peer" not in out and "[rank0]: Traceback" not in out, out[-3000:]
    saved = load_checkpoint(run / "acoustic/last.pt")["progress"]
    assert saved["epoch"] == len(history(run)) and saved["step"] >= 1


def test_stage_all_on_a_cpu_trains_the_vocoder_beside_the_acoustic_model_and_the_same_vocoder(dataset, tmp_path):
    """Two threads: the vocoder trains in a second process on one of them (train/beside.py). It is the very
    vocoder that training it alone on one thread gives, and its epochs show on the command's console."""
    out = io.StringIO()
    voc = ["vocoder.train.batch_size=4", "vocoder.train.segment_frames=16", "vocoder.train.warmup_steps=2"]
    threads = torch.get_num_threads()
    try:
        both = train(dataset, tmp_path / "both", stage="all", overrides=FAST + voc, epochs=2, early_stop=False,
                     console=Console(file=out, width=200), threads=2)
        torch.set_num_threads(1)
        train(dataset, tmp_path / "alone", stage="vocoder", overrides=FAST + voc, epochs=2, early_stop=False,
              console=QUIET, threads=1)
    finally:
        torch.set_num_threads(threads)
    text = out.getvalue()
    assert "vocoder: training beside the acoustic model in a second process (1 of 2 threads)" in text
    assert "vocoder epoch   2/2" in text and "acoustic epoch   2/2" in text
    assert set(both) == {"acoustic", "vocoder"} and both["vocoder"]["epochs"] == 2
    beside = load_checkpoint(tmp_path / "both/vocoder/best.pt")["modules"]["generator"]
    alone = load_checkpoint(tmp_path / "alone/vocoder/best.pt")["modules"]["generator"]
    assert beside.keys() == alone.keys()
    assert all(torch.equal(beside[k], alone[k]) for k in beside)
    assert (tmp_path / "both/acoustic/best.pt").is_file()


def test_stage_all_beside_a_busy_neighbour_starts_the_vocoder_once_two_cores_are_free(dataset, tmp_path,
                                                                                      monkeypatch):
    """Auto threads: a neighbour holding a core when the command starts no longer decides the whole run. The
    vocoder's worker starts after the first acoustic epoch that left two cores free; when none does, the vocoder
    trains after the acoustic model in this process."""
    import voiceclone.train.command as C

    voc = ["vocoder.train.batch_size=4", "vocoder.train.segment_frames=16", "vocoder.train.warmup_steps=2"]
    monkeypatch.setattr(C, "DECIDE_WINDOW", 0.0)
    monkeypatch.setattr(C, "allowed_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        for free, name in (([1, 2], "later"), ([1, 1, 1, 1], "never")):
            monkeypatch.setattr(C, "choose_threads", lambda requested, since=None, free=free: free.pop(0))
            out = io.StringIO()
            both = train(dataset, tmp_path / name, stage="all", overrides=FAST + voc, epochs=3, early_stop=False,
                         console=Console(file=out, width=200), threads=0)
            text = out.getvalue()
            assert "other processes are using the cores; it starts beside the acoustic model once two are free" in text
            assert both["acoustic"]["epochs"] == 3 and both["vocoder"]["epochs"] == 3
            assert (tmp_path / name / "vocoder/best.pt").is_file()
            started = "vocoder: training beside the acoustic model in a second process (1 of 2 threads)"
            if name == "later":  # after acoustic epoch 1, before epoch 2
                assert text.index("acoustic epoch   1/3") < text.index(started) < text.index("acoustic epoch   2/3")
            else:
                assert started not in text and text.index("acoustic epoch   3/3") < text.index("vocoder epoch   1/3")
    finally:
        torch.set_num_threads(threads)


def test_the_vocoder_beside_is_resumed_on_the_threads_it_trained_on(dataset, tmp_path, monkeypatch):
    """`--stage all --threads 2` trains the vocoder on 1 of them: the resume command its stop printed said
    `--threads 2`, and the vocoder resumed alone on two threads drifted from the uninterrupted run."""
    import voiceclone.train.command as C

    made = {}

    class Recorded:
        def __init__(self, name, target, args, threads, console, resume=""):
            made.update(args=args, threads=threads, resume=resume)

    monkeypatch.setattr(C, "Beside", Recorded)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    req = C.TrainRequest(dataset, tmp_path / "run", load_recipe("demo"), None, (), 3, False, False, False,
                         torch.device("cpu"), C.Distributed(), QUIET, threads=2, threads_arg=2)
    threads = torch.get_num_threads()
    try:
        C._VocoderWorker(req, (req.recipe, None)).start(2)
    finally:
        torch.set_num_threads(threads)
    assert made["threads"] == 1
    for command in (made["resume"], made["args"][0].resume_command("vocoder")):
        assert command.endswith("--threads 1") and "--stage vocoder" in command, command
    assert req.resume_command("all").endswith("--threads 2")  # both resumed together: the vocoder beside again


@pytest.mark.parametrize("stage", ["acoustic", "vocoder"])
def test_segments_mostly_of_padding_are_refused_before_training(dataset, tmp_path, stage):
    """vocoder.train.segment_frames = 8192 was within the recipe's bounds and had the process killed for want
    of memory: a segment over twice the longest utterance is refused, naming the longest."""
    from voiceclone.errors import UserError

    with pytest.raises(UserError, match=rf"^{stage}.train.segment_frames = 8192 .* is over twice the longest"):
        train(dataset, tmp_path / "run", stage=stage, overrides=FAST + [f"{stage}.train.segment_frames=8192"],
              epochs=1, console=QUIET)
    assert not (tmp_path / "run" / stage / "last.pt").exists()


def test_stage_all_one_after_the_other_refuses_a_bad_vocoder_setting_before_the_acoustic_model_trains(
        dataset, tmp_path):
    # threads=None: the stages train one after the other, as on a GPU; the refusal once came after the whole
    # acoustic training
    from voiceclone.errors import UserError

    with pytest.raises(UserError, match=r"^vocoder.train.segment_frames = 8192 .* is over twice the longest"):
        train(dataset, tmp_path / "run", stage="all", overrides=FAST + ["vocoder.train.segment_frames=8192"],
              epochs=1, console=QUIET)
    assert not (tmp_path / "run" / "acoustic" / "last.pt").exists()


def _raises_user_error(console):
    from voiceclone.errors import UserError

    console.print("about to fail")
    raise UserError("data/x.wav: not audio")


def _crashes(console):
    raise ZeroDivisionError("a bug")


def test_a_worker_process_error_comes_back_with_its_class_and_output(capsys):
    from voiceclone.errors import UserError
    from voiceclone.train.beside import Beside

    out = io.StringIO()
    worker = Beside("vocoder", _raises_user_error, (), 1, Console(file=out, width=100))
    with pytest.raises(UserError, match=r"^data/x.wav: not audio$"):
        worker.result()
    assert "about to fail" in out.getvalue()
    with pytest.raises(RuntimeError, match="ZeroDivisionError: a bug"):
        Beside("vocoder", _crashes, (), 1, QUIET).result()


def _sleeps(console):
    time.sleep(60)
    return "finished"


def test_a_worker_stopped_before_its_work_began_reports_nothing():
    from voiceclone.train.beside import Beside

    worker = Beside("vocoder", _sleeps, (), 1, QUIET)
    worker.stop()
    started = time.time()
    assert worker.result() is None and time.time() - started < 30


def test_a_worker_killed_from_outside_is_said_at_once_and_named_with_its_resume_command():
    from voiceclone.errors import TrainingFailed
    from voiceclone.train.beside import Beside

    out = io.StringIO()
    worker = Beside("vocoder", _sleeps, (), 1, Console(file=out, width=200), resume="voiceclone train --resume")
    time.sleep(1.0)
    os.kill(worker.process.pid, signal.SIGKILL)
    deadline = time.time() + 20
    while "its process ended" not in out.getvalue() and time.time() < deadline:
        time.sleep(0.1)
    assert "vocoder: its process ended (exit code -9); the training beside it goes on" in out.getvalue()
    with pytest.raises(TrainingFailed, match=r"exit code -9.*resume it with: voiceclone train --resume$"):
        worker.result()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals to hang up here")
def test_a_hang_up_of_the_whole_group_leaves_no_traceback_from_the_resource_tracker(tmp_path):
    """A closed terminal hangs up the command's whole process group, multiprocessing's resource tracker too:
    it was killed, relaunched as the queue's lock was freed, and the new one printed KeyError tracebacks."""
    script = tmp_path / "beside.py"
    script.write_text(
        "import os, signal, time\n"
        "from rich.console import Console\n"
        "from voiceclone.train.beside import Beside\n"
        "if __name__ == '__main__':\n"
        "    worker = Beside('vocoder', print, (), 1, Console(quiet=True))\n"
        "    worker.result()  # ended: the hang-up reaches this group alone\n"
        "    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # this process stands for the training that saves\n"
        "    os.killpg(0, signal.SIGHUP)\n"
        "    time.sleep(0.5)\n"
        "    worker.close()\n"
        "    del worker\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "died unexpectedly" not in r.stderr, r.stderr


def test_a_script_without_the_main_guard_is_told_to_add_it(dataset, tmp_path):
    # the spawned vocoder process re-imports the calling script, which called train() again: that call used
    # to meet the run lock, and the parent said only, at the end, that the worker ended without a result
    script = tmp_path / "train_both.py"
    script.write_text("from voiceclone.train.command import train\n"
                      f"train({str(dataset)!r}, {str(tmp_path / 'run')!r}, stage='all', epochs=1, threads=2, "
                      f"overrides={FAST + ['vocoder.train.batch_size=4', 'vocoder.train.segment_frames=16']!r})\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "put that call under `if __name__ == \"__main__\":`" in r.stderr
