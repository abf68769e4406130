"""Reliability of `prepare` and of the configuration checks (issue 11), through the CLI."""

from __future__ import annotations

import contextlib
import fcntl
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
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.config import load_recipe
from voiceclone.errors import UserError
from helpers import folder_size, one_line_error, small_filesystem

runner = CliRunner()


# --- 7 (prepare) and 12: a full disk -----------------------------------------------------------------


def test_a_full_disk_while_preparing_is_one_line_and_leaves_no_partial_files(synthetic_corpus, prepared_dataset,
                                                                              tmp_path):
    # room for part of the features only (they are written once, straight into the dataset's store)
    with small_filesystem(tmp_path / "fs", int(folder_size(prepared_dataset) * 0.6)) as fs:
        out = fs / "ds"
        r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(out), "--workers", "1"])
        one_line_error(r, "no space left", str(fs))
        left = [p.name for p in out.iterdir()] if out.exists() else []
        assert not [n for n in left if n.startswith((".prepare-tmp-", ".prepare-store"))], left


def test_an_output_folder_under_a_file_is_one_line(synthetic_corpus, tmp_path):
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(tmp_path / "file" / "ds")])
    one_line_error(r, "file")


# --- 8. SIGTERM ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_pool_workers_and_frees_the_lock(tmp_path):
    from voiceclone.synthetic import write_corpus

    write_corpus(tmp_path / "corpus", n_speakers=4, utterances=12, seconds=4.0, sample_rate=16000, seed=8)
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "voiceclone", "prepare", str(tmp_path / "corpus"), "--out",
                             str(out), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    store = out / ".prepare-store" / "f0.npy"  # features appended: the workers are busy
    while not (store.is_file() and store.stat().st_size > 128) and time.time() < deadline:
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert workers and proc.poll() is None
    survivors = workers
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.time() + 20
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        survivors = [w for w in workers if _alive(w)]
    finally:
        for w in survivors:  # never leave orphans behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
    out_text = proc.stdout.read()
    assert proc.returncode != 0 and "Traceback" not in out_text, out_text
    assert not survivors
    with open(out / ".prepare-lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: the next prepare may run


_KILL_ONE_WORKER = """
import os, sys
import voiceclone.data.prepare as P
from voiceclone.cli import main

original = P.process_file

def process_file(path, *args):
    if path.endswith("spk001_002.wav"):  # as the out-of-memory killer ends a worker decoding a huge file
        os.kill(os.getpid(), 9)
    return original(path, *args)

P.process_file = process_file
sys.argv = ["voiceclone", "prepare", sys.argv[1], "--out", sys.argv[2], "--workers", "2"]
main()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a forked worker inherits the patched function")
def test_a_file_that_kills_its_worker_is_skipped_and_the_rest_prepared(synthetic_corpus, tmp_path):
    # the executor stops the other workers with SIGTERM when one dies, and they had inherited the parent's
    # stop handler, which only sets a flag: prepare hung for good, a core spinning in the executor's thread
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_ONE_WORKER, str(synthetic_corpus), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        text, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("prepare hung after a worker died")
    assert proc.returncode == 0 and "Traceback" not in text, text
    report = json.loads((out / "report.json").read_text())
    skipped = {Path(r["path"]).name: r for r in report["skipped"]}
    assert list(skipped) == ["spk001_002.wav"], skipped
    assert skipped["spk001_002.wav"]["reason"] == "failed" and "died" in skipped["spk001_002.wav"]["detail"]
    assert report["used"] == report["files"] - 1
    # the death said nothing of the file: run again (memory freed, fewer workers), it was 'up to date' without it
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0 and "up to date" not in r.output, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [] and report["used"] == report["files"] and report["processed"] == 1


# --- 14. sane upper bounds ---------------------------------------------------------------------------


def test_absurd_sizes_are_refused_before_anything_is_allocated(synthetic_corpus, tmp_path):
    # just above the bound: without it this prepares (1e9, as reported, was OOM-killed at 23.7 GB)
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(tmp_path / "ds"),
                            "--set", "audio.n_mels=600"])
    one_line_error(r, "audio.n_mels")
    assert not (tmp_path / "ds").exists()
    for item in ("audio.n_mels=1000000000", "acoustic.model.hidden=200000", "audio.n_fft=100000000",
                 "vocoder.model.dim=1000000", "acoustic.train.batch_size=10000000",
                 "acoustic.train.segment_frames=100000000", "audio.sample_rate=100000000"):
        with pytest.raises(UserError, match=item.split("=")[0].split(".")[-1]):
            load_recipe("demo", [item])


# --- 15. a truncated array ---------------------------------------------------------------------------


def test_a_truncated_array_says_it_is_cut_short(prepared_dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    mel = ds / "features/mel.npy"
    os.truncate(mel, mel.stat().st_size - 100)
    r = runner.invoke(app, ["train", "--data", str(ds), "--run", str(tmp_path / "run")])
    # not "shape (n, 80) float16, expected (n, 80) float16": the sizes that differ (tmp_path's own name
    # holds the word "truncated", so the bytes are what is checked)
    one_line_error(r, "mel.npy", "bytes", "needed")


def test_a_torn_manifest_line_names_the_manifest_and_its_line(prepared_dataset, tmp_path):
    # was "<dataset>: incomplete or damaged dataset (Unterminated string ...: line 1 column 195)": the folder,
    # and the line within the torn line; a blank line is harmless
    ds = tmp_path / "ds"
    shutil.copytree(prepared_dataset, ds)
    manifest = ds / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n" + lines[0][:50])
    r = runner.invoke(app, ["train", "--data", str(ds), "--run", str(tmp_path / "run")])
    one_line_error(r, f"{manifest}: line {len(lines) + 2} is damaged", "column")


# --- a damaged mp3: libmpg123's own notes ------------------------------------------------------------


def _damaged_mp3s(folder: Path) -> list[Path]:
    import soundfile as sf

    t = np.arange(32000) / 16000
    good = folder / "good.mp3"
    sf.write(good, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="MP3")
    data = good.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    files = {"cut.mp3": data[: len(data) // 3],  # libmpg123: "Warning: Xing stream size off by more than 1%"
             "resync.mp3": data[:2000] + noise[2000:5000] + data[5000:],  # "Note: Illegal Audio-MPEG-Header"
             "noise.mp3": data[:400] + noise[400:]}  # the same, when the file is opened
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / n for n in files]


def test_a_damaged_mp3_prints_only_our_line(tmp_path, capfd):
    from voiceclone.audio import AudioError, load_audio

    for path in _damaged_mp3s(tmp_path):
        with pytest.raises(AudioError, match=path.name):
            load_audio(path, 16000)
        print("after", path.name, file=sys.stderr)  # stderr works again after each decode
    err = capfd.readouterr().err
    assert err.splitlines() == [f"after {n}" for n in ("cut.mp3", "resync.mp3", "noise.mp3")], err


def test_damage_past_the_header_of_a_streamed_file_is_an_audio_error(tmp_path, capfd):
    # stream_audio reads long sources and references block by block: a decoder error mid-way named no file
    # and ended a folder run with a traceback
    from voiceclone.audio import AudioError, stream_audio

    path = _damaged_mp3s(tmp_path)[1]
    with pytest.raises(AudioError, match=f"{path.name}: corrupt"):
        for _ in stream_audio(path, 16000):
            pass
    assert capfd.readouterr().err == ""


def test_a_decoder_error_gives_its_reason_not_the_path_again(tmp_path):
    # libsndfile's "Error opening '<path>': <reason>" was kept whole and cut at 120 characters, so a long
    # path left no reason; of an mp3 without a stream it says "File does not exist", of a file that exists
    from voiceclone.audio import AudioError, load_audio

    folder = tmp_path / ("long folder name " * 6).strip()
    folder.mkdir()
    (folder / "notes.wav").write_text("not a recording\n" * 50)
    with pytest.raises(AudioError) as e:
        load_audio(folder / "notes.wav", 16000)
    assert str(e.value) == f"{folder / 'notes.wav'}: not audio (Format not recognised.)"
    (folder / "noise.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="no audio stream the decoder can read") as e:
        load_audio(folder / "noise.mp3", 16000)
    assert "does not exist" not in str(e.value)


def test_an_output_folder_that_is_a_looping_link_is_one_line(synthetic_corpus, tmp_path):
    # Path.resolve of the output (to keep it out of the inputs) raised RuntimeError("Symlink loop")
    os.symlink("ds", tmp_path / "ds")
    r = runner.invoke(app, ["prepare", str(synthetic_corpus), "--out", str(tmp_path / "ds"), "--workers", "1"])
    one_line_error(r, str(tmp_path / "ds"), "loops")
