"""Reliability of trained models in use (issue 11): hostile or damaged bundles, output paths that cannot be
written, fine-tuned runs, references. Through the CLI, on a briefly trained tiny run."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.synthetic import make_speakers, synth_utterance
from helpers import one_line_error, set_options, small_filesystem

runner = CliRunner()
FAST = ["acoustic.train.batch_size=4", "acoustic.train.segment_frames=48", "vocoder.train.batch_size=4"]


@pytest.fixture(scope="module")
def model(prepared_dataset, synthetic_corpus, tmp_path_factory) -> dict[str, Path]:
    """A run with both stages briefly trained, and its bundle."""
    root = tmp_path_factory.mktemp("rel_models")
    for stage, epochs in (("acoustic", "2"), ("vocoder", "1")):
        r = runner.invoke(app, ["train", "--data", str(prepared_dataset), "--run", str(root / "run"), "--stage",
                                stage, "--epochs", epochs, "--no-early-stop", *set_options(FAST)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(root / "run"), "--out", str(root / "model.safetensors")])
    assert r.exit_code == 0, r.output
    wavs = sorted(synthetic_corpus.rglob("*.wav"))
    ref = root / "ref.wav"  # 4 s of one voice: no warning about a short reference
    sf.write(ref, np.concatenate([sf.read(w, dtype="float32")[0] for w in wavs[:2]]), 16000)
    return {"root": root, "run": root / "run", "bundle": root / "model.safetensors", "ref": ref,
            "src": wavs[-1], "data": prepared_dataset, "corpus": synthetic_corpus}


def synth(model: dict, model_path: Path, out: Path, *extra: str):
    args = ["synthesize", "--model", str(model_path), "--out", str(out)]
    if "--reference" not in extra:
        args += ["--reference", str(model["ref"])]
    if "--source" not in extra:
        args += ["--source", str(model["src"])]
    return runner.invoke(app, [*args, *extra])


def rewrite_bundle(src: Path, dst: Path, tensors=None, meta=None) -> Path:
    with safe_open(str(src), "pt") as f:
        header = f.metadata()
    save_file(tensors if tensors is not None else load_file(str(src)), str(dst),
              metadata={**header, **(meta or {})})
    return dst


# --- 10. non-finite and wrongly typed weights ----------------------------------------------------------


def test_bundles_with_non_finite_or_integer_weights_are_refused(model, tmp_path):
    tensors = load_file(str(model["bundle"]))
    name = next(k for k in tensors if k.startswith("acoustic.") and tensors[k].is_floating_point())
    nan = dict(tensors)
    nan[name] = torch.full_like(tensors[name], float("nan"))
    r = synth(model, rewrite_bundle(model["bundle"], tmp_path / "nan.safetensors", nan), tmp_path / "o.wav")
    one_line_error(r, "nan.safetensors", "non-finite", name)
    vname = next(k for k in tensors if k.startswith("vocoder.") and tensors[k].is_floating_point())
    ints = dict(tensors)
    ints[vname] = tensors[vname].to(torch.int8)
    r = synth(model, rewrite_bundle(model["bundle"], tmp_path / "int8.safetensors", ints), tmp_path / "o.wav")
    one_line_error(r, "int8.safetensors", "int8", vname)
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("where", ["acoustic.", "vocoder.", "voice"])
def test_bundles_with_absurd_finite_weights_are_refused_not_rendered_as_noise(model, tmp_path, where):
    """Weights of 1e30 are finite, so they loaded; the NaN they made was clipped and written as full-scale
    noise, exit 0."""
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    tensors, meta, extra = load_file(str(model["bundle"])), json.loads(header["meta"]), []
    if where == "voice":  # a fine-tuned model's own voice, used without a --reference
        tensors["acoustic.voice"] = torch.full((json.loads(header["recipe"])["acoustic"]["model"]["speaker_dim"],),
                                               1e30)
        meta["acoustic"].update(learned_voice=True)
    else:
        for k, t in tensors.items():
            if k.startswith(where) and t.is_floating_point() and t.dim() > 1:
                tensors[k] = torch.full_like(t, 1e30)
        extra = ["--reference", str(model["ref"])]
    bad = rewrite_bundle(model["bundle"], tmp_path / "big.safetensors", tensors, {"meta": json.dumps(meta)})
    r = runner.invoke(app, ["synthesize", "--model", str(bad), "--source", str(model["src"]),
                            "--out", str(tmp_path / "o.wav"), *extra])
    one_line_error(r, "big.safetensors", "not finite")
    assert not (tmp_path / "o.wav").exists()


# --- 11. fine-tuning the acoustic model alone ----------------------------------------------------------


def test_a_fine_tuned_acoustic_model_uses_its_bases_vocoder(model, tmp_path):
    voice = tmp_path / "voice"
    voice.mkdir()
    for wav in sorted((model["corpus"]).rglob("*.wav"))[:6]:  # one speaker's utterances
        (voice / wav.name).write_bytes(wav.read_bytes())
    r = runner.invoke(app, ["prepare", str(voice), "--out", str(tmp_path / "vds"), "--workers", "1",
                            "--set", "prepare.val_per_speaker=2"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "ft"
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "vds"), "--run", str(run), "--init-from",
                            str(model["run"]), "--finetune", "--epochs", "1", *set_options(FAST)])
    assert r.exit_code == 0, r.output
    r = synth(model, run, tmp_path / "o.wav")
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "ft.safetensors")])
    assert r.exit_code == 0, r.output
    base, tuned = load_file(str(model["bundle"])), load_file(str(tmp_path / "ft.safetensors"))
    vocoder = [k for k in base if k.startswith("vocoder.")]
    assert vocoder and all(torch.equal(base[k], tuned[k]) for k in vocoder)


def test_fine_tuning_a_base_whose_loss_is_nan_before_training_blames_the_base(model, tmp_path):
    """A learned voice of 1e30 is finite, so the base loaded; the fine-tune diverged at once and its advice
    was to lower the learning rate."""
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    tensors, meta = load_file(str(model["bundle"])), json.loads(header["meta"])
    tensors["acoustic.voice"] = torch.full((json.loads(header["recipe"])["acoustic"]["model"]["speaker_dim"],), 1e30)
    meta["acoustic"].update(learned_voice=True)
    bad = rewrite_bundle(model["bundle"], tmp_path / "big.safetensors", tensors, {"meta": json.dumps(meta)})
    r = runner.invoke(app, ["train", "--data", str(model["data"]), "--run", str(tmp_path / "ft"), "--init-from",
                            str(bad), "--finetune", "--epochs", "1", *set_options(FAST)])
    one_line_error(r, "big.safetensors", "before any fine-tuning")
    assert "learning rate" not in r.output


# --- 12. outputs that cannot be written --------------------------------------------------------------


def test_unwritable_output_paths_are_one_line(model, tmp_path):
    (tmp_path / "file").write_text("x")
    under_file = tmp_path / "file" / "x"
    (tmp_path / "folder.wav").mkdir()
    one_line_error(synth(model, model["bundle"], tmp_path / "folder.wav"), "folder.wav")
    one_line_error(synth(model, model["bundle"], under_file / "o.wav"), "file")
    one_line_error(runner.invoke(app, ["export", str(model["run"]), "--out", str(under_file / "m.safetensors")]),
                   "file")
    (tmp_path / "dir.safetensors").mkdir()
    one_line_error(runner.invoke(app, ["export", str(model["run"]), "--out", str(tmp_path / "dir.safetensors")]),
                   "dir.safetensors")
    base = ["evaluate", "--model", str(model["bundle"]), "--data", str(model["data"]), "--pairs", "2",
            "--max-utterances", "2"]
    one_line_error(runner.invoke(app, [*base, "--out", str(under_file / "r.json")]), "file")
    one_line_error(runner.invoke(app, ["evaluate", "--run", str(model["run"]), "--plot", str(under_file / "c.png")]),
                   "file")


def test_a_device_or_a_pipe_as_the_output_is_refused_and_left_as_it_is(model, tmp_path):
    """The output was written beside its name and renamed over it: run as root, `--out /dev/null` replaced the
    machine's /dev/null with a WAV file, exit 0."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    one_line_error(synth(model, model["bundle"], fifo), "pipe.wav", "not a file")
    one_line_error(synth(model, model["bundle"], fifo, "--stream"), "pipe.wav", "not a file")
    bundle = tmp_path / "pipe.safetensors"
    os.mkfifo(bundle)
    one_line_error(runner.invoke(app, ["export", str(model["run"]), "--out", str(bundle)]), "pipe.safetensors",
                   "not a file")
    one_line_error(runner.invoke(app, ["evaluate", "--run", str(model["run"]), "--out", "/dev/null"]), "/dev/null",
                   "not a file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(bundle).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_an_output_in_a_folder_that_takes_no_files_is_refused_before_the_work(model):
    """Only the parent's existence was checked: `evaluate --out /proc/r.json` judged every pair, then failed."""
    r = runner.invoke(app, ["evaluate", "--run", str(model["run"]), "--out", "/proc/r.json"])
    one_line_error(r, "/proc/r.json: cannot be written: no file can be made in /proc")


def test_the_write_probe_asks_the_folder_the_files_will_be_made_in(tmp_path, monkeypatch):
    """It asked the parent of an existing output folder: `--out /tmp` (parent /) or a run folder under a
    read-only parent was refused for a normal user, and a read-only output folder passed."""
    import tempfile

    from voiceclone.errors import check_output

    asked = []
    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: asked.append(Path(kw["dir"])) or real(**kw))
    (tmp_path / "run").mkdir()
    check_output(tmp_path / "run", folder=True)  # an existing folder: its files go inside it
    check_output(tmp_path / "new" / "deeper", folder=True)  # made later, under the nearest existing folder
    check_output(tmp_path / "o.wav", suffix=".wav")  # a file: made beside its name, then renamed
    assert asked == [tmp_path / "run", tmp_path, tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the probes are gone


def test_a_full_disk_when_writing_audio_or_a_bundle_is_one_line(model, tmp_path):
    size = model["bundle"].stat().st_size
    with small_filesystem(tmp_path / "fs", size + size // 2) as fs:
        r = runner.invoke(app, ["export", str(model["run"]), "--out", str(fs / "a.safetensors")])
        assert r.exit_code == 0, r.output
        before = (fs / "a.safetensors").read_bytes()
        r = runner.invoke(app, ["export", str(model["run"]), "--out", str(fs / "b.safetensors")])
        one_line_error(r, "no space left", "b.safetensors")
        assert sorted(p.name for p in fs.iterdir()) == ["a.safetensors"]
        assert (fs / "a.safetensors").read_bytes() == before
        # fill the rest, then synthesize
        free = fs / "filler"
        with open(free, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        r = synth(model, model["bundle"], fs / "o.wav")
        one_line_error(r, "no space left", "o.wav")
        assert not (fs / "o.wav").exists() and not list(fs.glob(".*"))


def test_outputs_named_near_the_name_limit_are_written(model, tmp_path):
    """A file name may be 255 bytes, but each output was written through `.NAME.part` (or `.NAME.tmp`) beside
    it: an output named 250-255 bytes was "name too long", exit 2, and in a folder it stopped the run."""
    wav = tmp_path / ("v" * 251 + ".wav")
    r = synth(model, model["bundle"], wav)
    assert r.exit_code == 0, r.output
    r = synth(model, model["bundle"], tmp_path / ("s" * 251 + ".wav"), "--stream")
    assert r.exit_code == 0, r.output
    bundle = tmp_path / ("m" * 240 + ".safetensors")
    r = runner.invoke(app, ["export", str(model["run"]), "--out", str(bundle)])
    assert r.exit_code == 0, r.output
    assert sf.info(str(wav)).frames > 0 and bundle.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unwritable_stream_outputs_are_one_line_and_leave_nothing(model, tmp_path):
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "file").write_text("x")
    one_line_error(synth(model, model["bundle"], tmp_path / "folder.wav", "--stream"), "folder.wav")
    one_line_error(synth(model, model["bundle"], tmp_path / "file" / "o.wav", "--stream"), "file")
    with small_filesystem(tmp_path / "fs", 64 * 1024) as fs:
        with open(fs / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        one_line_error(synth(model, model["bundle"], fs / "o.wav", "--stream"), "no space left", "o.wav")
        assert sorted(p.name for p in fs.iterdir()) == ["filler"]


@pytest.mark.parametrize("content", ["tensor", "foreign dict", "no tensors"])
def test_a_foreign_best_checkpoint_in_a_run_folder_is_one_line(model, tmp_path, content):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model["run"], run)
    best = run / "vocoder" / "best.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), best)
    elif content == "foreign dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, best)
    else:
        state = torch.load(best, weights_only=True)
        torch.save({**state, "modules": {"generator": [1, 2]}}, best)
    one_line_error(synth(model, run, tmp_path / "o.wav"), "best.pt", "not a voiceclone checkpoint")
    one_line_error(runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.safetensors")]), "best.pt")


def test_a_best_checkpoint_whose_recipe_lost_its_audio_settings_is_named(model, tmp_path):
    """It loaded the default audio settings (22050 Hz), and the vocoder was blamed: "trained with another audio
    config"."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model["run"], run)
    best = run / "acoustic" / "best.pt"
    state = torch.load(best, weights_only=True)
    torch.save({**state, "recipe": {k: v for k, v in state["recipe"].items() if k != "audio"}}, best)
    one_line_error(synth(model, run, tmp_path / "o.wav"), "acoustic/best.pt", "no audio.sample_rate")


@pytest.mark.parametrize("stage, change, words", [
    ("acoustic", {"epoch": torch.tensor(2)}, "'epoch' must be a whole number"),
    ("vocoder", {"epoch": "x"}, "'epoch' must be a whole number"),
    ("vocoder", {"meta": {"x": torch.zeros(3)}}, "not JSON serializable")])
def test_a_best_checkpoint_holding_values_json_cannot_write_is_one_line(model, tmp_path, stage, change, words):
    """export wrote the epochs and metadata into the bundle's JSON header, and evaluate into its report: a tensor
    there was a traceback (exit 1), for evaluate after the whole evaluation; a string epoch went into both."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model["run"], run)
    best = run / stage / "best.pt"
    torch.save({**torch.load(best, weights_only=True), **change}, best)
    r = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.safetensors")])
    one_line_error(r, f"{stage}/best.pt", words)
    assert not (tmp_path / "m.safetensors").exists()


# --- 13. malformed bundle metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("meta", [{"meta": "[1, 2]"}, {"format_version": "abc"}, {"meta": "{\"acoustic\": 3}"},
                                  {"recipe": "[]"}])
def test_malformed_bundle_metadata_is_one_line(model, tmp_path, meta):
    bad = rewrite_bundle(model["bundle"], tmp_path / "bad.safetensors", meta=meta)
    one_line_error(synth(model, bad, tmp_path / "o.wav"), "bad.safetensors")


@pytest.mark.parametrize("key, value", [("hop_length", 128), ("sample_rate", 22050)])
def test_audio_settings_edited_into_a_bundle_are_refused(model, tmp_path, key, value):
    """The networks' tensors fit any frame rate: an edited hop or rate synthesized at the wrong speed and pitch."""
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    recipe = json.loads(header["recipe"])
    recipe["audio"][key] = value
    bad = rewrite_bundle(model["bundle"], tmp_path / "edited.safetensors", meta={"recipe": json.dumps(recipe)})
    one_line_error(synth(model, bad, tmp_path / "o.wav"), "edited.safetensors", "audio settings")
    older = {k: v for k, v in header.items() if k != "audio_sha256"}  # exported before the digest: loads
    save_file(load_file(str(model["bundle"])), str(tmp_path / "older.safetensors"), metadata=older)
    assert synth(model, tmp_path / "older.safetensors", tmp_path / "o.wav").exit_code == 0


def test_a_format_version_of_superscript_digits_is_named_as_such(model, tmp_path):
    """'²' is a digit to str.isdigit, not to int: it was reported as a safetensors error."""
    bad = rewrite_bundle(model["bundle"], tmp_path / "bad.safetensors", meta={"format_version": "²"})
    one_line_error(synth(model, bad, tmp_path / "o.wav"), "format_version")


@pytest.mark.parametrize("f0", ["abc", [1, 2], -100.0, 0, 1e30, 1e-9])
def test_a_damaged_fine_tuned_voice_register_is_one_line(model, tmp_path, f0):
    """A hand-edited voice_f0_median was a TypeError traceback (a string) or a NaN, +1109 st or -451 st shift."""
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(model["bundle"]))
    tensors["acoustic.voice"] = torch.zeros(json.loads(header["recipe"])["acoustic"]["model"]["speaker_dim"])
    meta = json.loads(header["meta"])
    meta["acoustic"].update(learned_voice=True, voice_f0_median=f0)
    bad = rewrite_bundle(model["bundle"], tmp_path / "voice.safetensors", tensors, {"meta": json.dumps(meta)})
    r = runner.invoke(app, ["synthesize", "--model", str(bad), "--source", str(model["src"]),
                            "--out", str(tmp_path / "o.wav")])
    one_line_error(r, "voice.safetensors", "voice_f0_median")
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("env", [[1e30] * 80, [0.0] * 79, ["x"] * 80, "abc"])
def test_a_damaged_fine_tuned_voice_envelope_is_one_line(model, tmp_path, env):
    """A huge voice_envelope was added to the output mel (full-scale noise, exit 0) and copied into the ONNX
    config; one of the wrong length was silently dropped."""
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(model["bundle"]))
    tensors["acoustic.voice"] = torch.zeros(json.loads(header["recipe"])["acoustic"]["model"]["speaker_dim"])
    meta = json.loads(header["meta"])
    meta["acoustic"].update(learned_voice=True, voice_f0_median=150.0, voice_envelope=env)
    bad = rewrite_bundle(model["bundle"], tmp_path / "voice.safetensors", tensors, {"meta": json.dumps(meta)})
    r = runner.invoke(app, ["synthesize", "--model", str(bad), "--source", str(model["src"]),
                            "--out", str(tmp_path / "o.wav")])
    one_line_error(r, "voice.safetensors", "voice_envelope")
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("edit", ["no acoustic entry", "no speakers", "empty speakers"])
def test_a_bundle_that_names_no_training_speakers_is_one_line(model, tmp_path, edit):
    """With the classifier cut to one row, the tensors fit a model of no speakers: evaluate was a KeyError
    traceback ('acoustic', 'speakers'), and a fine-tune from it an IndexError in its first step."""
    with safe_open(str(model["bundle"]), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(model["bundle"]))
    for name in ("acoustic.classifier.weight", "acoustic.classifier.bias"):
        tensors[name] = tensors[name][:1].contiguous()
    if edit == "no acoustic entry":
        del meta["acoustic"]
    elif edit == "no speakers":
        del meta["acoustic"]["speakers"]
    else:
        meta["acoustic"]["speakers"] = []
    bad = rewrite_bundle(model["bundle"], tmp_path / "nospk.safetensors", tensors, {"meta": json.dumps(meta)})
    one_line_error(runner.invoke(app, ["evaluate", "--model", str(bad), "--data", str(model["data"]), "--no-judges",
                                       "--split", "train", "--pairs", "1", "--max-utterances", "1"]),
                   "nospk.safetensors", "acoustic")
    one_line_error(runner.invoke(app, ["train", "--data", str(model["data"]), "--run", str(tmp_path / "ft"),
                                       "--init-from", str(bad), "--finetune", "--epochs", "1"]), "nospk.safetensors")


# --- 14. sizes a bundle asks for ---------------------------------------------------------------------


def test_a_bundle_asking_for_absurd_sizes_is_refused_before_allocating(model, tmp_path):
    with safe_open(str(model["bundle"]), "pt") as f:
        header = f.metadata()
    meta = json.loads(header["meta"])
    meta["acoustic"]["speakers"] = [f"s{i}" for i in range(2_000_000)]
    bad = rewrite_bundle(model["bundle"], tmp_path / "many.safetensors", meta={"meta": json.dumps(meta)})
    one_line_error(synth(model, bad, tmp_path / "o.wav"), "many.safetensors", "speakers")
    recipe = json.loads(header["recipe"])
    recipe["acoustic"]["model"]["hidden"] = 200000
    bad = rewrite_bundle(model["bundle"], tmp_path / "huge.safetensors", meta={"recipe": json.dumps(recipe)})
    one_line_error(synth(model, bad, tmp_path / "o.wav"), "huge.safetensors", "hidden")


def test_a_bundle_whose_sizes_multiply_to_an_absurd_model_is_refused_before_allocating(model, tmp_path):
    """Every size within its own bound, together 13 billion parameters: a 3 MB file made the loader allocate
    52 GB (here, under a 6 GB limit, a MemoryError traceback) before any tensor was compared."""
    import resource
    import subprocess
    import sys

    with safe_open(str(model["bundle"]), "pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
    recipe["acoustic"]["model"].update(hidden=4096, encoder_layers=64, decoder_layers=64, speaker_layers=64,
                                       kernel_size=63)
    bad = rewrite_bundle(model["bundle"], tmp_path / "bomb.safetensors", meta={"recipe": json.dumps(recipe)})
    limit = 6 * 2**30
    r = subprocess.run([sys.executable, "-m", "voiceclone", "synthesize", "--model", str(bad), "--source",
                        str(model["src"]), "--reference", str(model["ref"]), "--out", str(tmp_path / "o.wav")],
                       capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "bomb.safetensors" in r.stderr and "do not match" in r.stderr, r.stderr
    assert not (tmp_path / "o.wav").exists()


# --- 15. references ----------------------------------------------------------------------------------


def test_a_reference_that_is_a_folder_is_called_a_folder(model, tmp_path):
    r = synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(tmp_path))
    one_line_error(r, str(tmp_path), "folder")
    assert "missing" not in r.output


def test_a_long_reference_that_starts_with_room_tone_is_read_where_the_voice_is(tmp_path):
    """The first 30 s from its "first sound" (above -80 dBFS) were used: after 70 s of room tone at -60 dBFS,
    the voice was taken from the noise alone."""
    from voiceclone.inference.synthesize import _read_reference

    sr, rng = 16000, np.random.default_rng(0)
    speech = np.concatenate([synth_utterance(make_speakers(2)[0], 2.0, sr, seed=k)[0] for k in range(20)])
    tone = (0.001 * rng.standard_normal(70 * sr)).astype(np.float32)
    sf.write(tmp_path / "long.wav", np.concatenate([tone, 0.3 * speech / np.abs(speech).max()]), sr)
    notes: list[str] = []
    y = _read_reference(tmp_path / "long.wav", sr, notes)
    assert len(y) == 30 * sr and np.sqrt(np.mean(y**2)) > 10 * 0.001, np.sqrt(np.mean(y**2))
    start = float(notes[0].split("(from ")[1].split(" s)")[0])
    assert 70 <= start <= 80, notes  # within the 40 s of speech


def test_a_long_reference_is_not_read_whole(model, tmp_path):
    sr = 16000
    speech, _ = sf.read(model["ref"], dtype="float32")
    long = tmp_path / "long.wav"
    silent = tmp_path / "silent.wav"
    minute = np.zeros(60 * sr, np.float32)
    with sf.SoundFile(long, "w", sr, 1, "PCM_16") as f, sf.SoundFile(silent, "w", sr, 1, "PCM_16") as g:
        f.write(np.tile(speech, 3))
        for _ in range(10):  # ten minutes of silence after the speech
            f.write(minute)
            g.write(minute)
    whole = 10 * 60 * 22050 * 4  # the decoded file at the model's rate, float32
    tracemalloc.start()
    try:
        r = synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(long))
        assert r.exit_code == 0, r.output
        _, peak = tracemalloc.get_traced_memory()
        assert peak < whole / 2, peak
        tracemalloc.reset_peak()
        r = synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(silent))
        one_line_error(r, "silent.wav", "silent")
        _, peak = tracemalloc.get_traced_memory()
        assert peak < whole / 2, peak
    finally:
        tracemalloc.stop()


def test_a_source_shorter_than_one_frame_is_one_line_and_skipped_in_a_folder(model, tmp_path):
    """A 100-sample source was a RuntimeError traceback from the content encoder's convolution (exit 1), and
    in a folder it stopped the run."""
    folder = tmp_path / "sources"
    folder.mkdir()
    speech, _ = sf.read(model["src"], dtype="float32")
    sf.write(folder / "blip.wav", speech[np.argmax(np.abs(speech)) :][:100], 16000)
    (folder / "speech.wav").write_bytes(Path(model["src"]).read_bytes())
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--source", str(folder / "blip.wav")),
                   "blip.wav", "too short")
    assert not (tmp_path / "o.wav").exists()
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(folder))
    assert r.exit_code == 0, r.output
    assert "blip.wav" in r.output and (tmp_path / "out" / "speech.wav").is_file()
    # --stream wrote it as a 0.00 s file, exit 0
    one_line_error(synth(model, model["bundle"], tmp_path / "s.wav", "--source", str(folder / "blip.wav"),
                         "--stream"), "blip.wav", "too short")
    assert not (tmp_path / "s.wav").exists()


def test_a_reference_shorter_than_one_frame_beside_a_good_one_is_one_line(model, tmp_path):
    """The good reference made up the 1 s minimum, and the 100-sample clip alone in the pool of short clips was
    a RuntimeError traceback from the speaker encoder's convolution (exit 1)."""
    speech, _ = sf.read(model["src"], dtype="float32")
    sf.write(tmp_path / "blip.wav", speech[np.argmax(np.abs(speech)) :][:100], 16000)
    for extra in ((), ("--stream",)):
        one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(model["ref"]),
                             "--reference", str(tmp_path / "blip.wav"), *extra), "blip.wav", "too short")
    assert not (tmp_path / "o.wav").exists()


def test_a_skipped_file_is_named_as_it_is_even_with_square_brackets(model, tmp_path):
    """The skipped lines went through rich markup: '[bold]take.wav' was named 'take.wav', another file."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "ok.wav").write_bytes(Path(model["src"]).read_bytes())
    (folder / "[bold]take.wav").write_text("not audio")
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(folder))
    assert r.exit_code == 0, r.output
    assert "[bold]take.wav" in r.output.replace("\n", ""), r.output  # rich wraps at 80 columns


def test_a_skipped_file_with_a_line_break_in_its_name_is_named_on_one_line(model, tmp_path):
    """rich drops a carriage return: 'bad\\rtake.wav' was named 'badtake.wav', another file's name; a newline
    split the line. They are written as Python writes them, as the one-line errors do."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "ok.wav").write_bytes(Path(model["src"]).read_bytes())
    (folder / "bad\rtake.wav").write_text("not audio")
    (folder / "two\nlines.wav").write_text("not audio")
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(folder))
    assert r.exit_code == 0, r.output
    text = r.output.replace("\n", "")  # rich wraps at 80 columns
    assert "bad\\rtake.wav" in text and "two\\nlines.wav" in text, r.output


def test_an_output_of_a_folder_that_cannot_be_written_is_skipped_and_the_rest_converted(model, tmp_path):
    """An output path taken by a folder (out/a.wav/) or below a file (out/sub as a file) stopped the run at
    that file, exit 2, the sources after it never converted."""
    folder, out = tmp_path / "sources", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.wav", "sub/b.wav", "z.wav"):
        (folder / name).write_bytes(Path(model["src"]).read_bytes())
    (out / "a.wav").mkdir(parents=True)
    (out / "sub").write_text("not a folder")
    r = synth(model, model["bundle"], out, "--source", str(folder))
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and r.output.count("skipped") == 2, r.output
    assert (out / "z.wav").is_file() and sf.info(str(out / "z.wav")).frames > 0
    assert (out / "a.wav").is_dir() and (out / "sub").read_text() == "not a folder"
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "sub", "z.wav"]  # no temporary file left


def test_a_broken_link_in_a_source_folder_is_said_and_the_rest_converted(model, tmp_path):
    """It was passed over without a word, where prepare lists it as missing."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "speech.wav").write_bytes(Path(model["src"]).read_bytes())
    (folder / "gone.wav").symlink_to(tmp_path / "moved-away.wav")
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(folder))
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "gone.wav" in r.output and "missing" in r.output, r.output
    assert (tmp_path / "out" / "speech.wav").is_file() and not (tmp_path / "out" / "gone.wav").exists()
    (folder / "speech.wav").unlink()  # links alone: named, not "no audio files" as if the folder were empty
    one_line_error(synth(model, model["bundle"], tmp_path / "out2", "--source", str(folder)),
                   "no audio files in this folder (1 named like audio, none a readable file: gone.wav)")


def test_a_linked_subfolder_of_a_source_folder_is_converted(model, tmp_path):
    """Its files were passed over without a word (Path.rglob does not follow links), where prepare reads them;
    a link back up the tree is not walked again."""
    folder, elsewhere = tmp_path / "sources", tmp_path / "usb" / "day2"
    (folder / "day1").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (folder / "day1" / "a.wav").write_bytes(Path(model["src"]).read_bytes())
    (elsewhere / "b.wav").write_bytes(Path(model["src"]).read_bytes())
    (folder / "day2").symlink_to(elsewhere)
    (folder / "day1" / "up").symlink_to(folder)
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(folder))
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav")) == \
        ["day1/a.wav", "day2/b.wav"]
def test_a_reference_named_twice_counts_once(model, tmp_path):
    """0.6 s named twice passed the 1 s minimum as "1.2 s of speech in all", and weighed double in the average."""
    speech, sr = sf.read(model["ref"], dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, speech[: int(0.6 * sr)], sr)
    twice = ("--reference", str(short), "--reference", str(tmp_path / "." / "short.wav"))
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", *twice), "short.wav", "0.60 s of speech")
    r = synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(model["ref"]), "--reference",
              str(model["ref"]))
    assert r.exit_code == 0, r.output
    assert "given more than once as a --reference; used once" in " ".join(r.output.split()), r.output


def test_a_long_source_cut_short_is_refused_as_the_short_one_is(model, tmp_path):
    """Sources over 30 s are read block by block, and that path skipped the truncation check: a WAV with
    30% of its data gone was converted into a shorter output, exit 0, where a short one is refused."""
    speech, sr = sf.read(model["src"], dtype="float32")
    whole = tmp_path / "long.wav"
    sf.write(whole, np.tile(speech, int(40 * sr / len(speech)) + 1), sr)
    cut = tmp_path / "cut.wav"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--source", str(cut)), "cut.wav", "truncated")
    assert not (tmp_path / "o.wav").exists()


def test_an_output_onto_an_input_is_refused_and_the_input_kept(model, tmp_path):
    """--out naming the --source or a --reference, or a folder --out where an output lands on a source file,
    replaced the recording with its conversion, exit 0."""
    folder = tmp_path / "in"
    (folder / "out").mkdir(parents=True)
    src, ref = folder / "a.wav", tmp_path / "ref.wav"
    for p in (src, folder / "out" / "a.wav", ref):
        p.write_bytes(Path(model["src"]).read_bytes())
    before = {p: p.read_bytes() for p in (src, folder / "out" / "a.wav", ref)}
    one_line_error(synth(model, model["bundle"], src, "--source", str(src)), "is the --source file")
    one_line_error(synth(model, model["bundle"], src, "--source", str(src), "--stream"), "is the --source file")
    one_line_error(synth(model, model["bundle"], ref, "--reference", str(ref)), "is the --reference file")
    one_line_error(synth(model, model["bundle"], folder, "--source", str(folder)), "is the --source folder")
    # in/a.wav would be written to in/out/a.wav, itself a source
    one_line_error(synth(model, model["bundle"], folder / "out", "--source", str(folder)),
                   "would overwrite its file", str(folder / "out" / "a.wav"))
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in folder.rglob("*")) == ["a.wav", "a.wav", "out"]


def test_a_folder_output_onto_a_reference_is_refused_and_the_reference_kept(model, tmp_path):
    """A --reference inside the output folder, named as a source's output (takes/voice.wav -> out/voice.wav),
    was replaced by that source's conversion, exit 0."""
    takes, out = tmp_path / "takes", tmp_path / "out"
    takes.mkdir()
    out.mkdir()
    (takes / "voice.wav").write_bytes(Path(model["src"]).read_bytes())
    ref = out / "voice.wav"
    ref.write_bytes(Path(model["ref"]).read_bytes())
    before = ref.read_bytes()
    one_line_error(synth(model, model["bundle"], out, "--source", str(takes), "--reference", str(ref)),
                   "would overwrite the --reference", str(ref))
    assert ref.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["voice.wav"]


@pytest.mark.parametrize("name", ["voice.mp3", "voice.flac"])
def test_an_output_named_for_another_format_is_one_line(model, tmp_path, name):
    """The output is WAV: an --out of voice.mp3 got WAV data under that name, exit 0."""
    one_line_error(synth(model, model["bundle"], tmp_path / name), name, "WAV")
    one_line_error(synth(model, model["bundle"], tmp_path / name, "--stream"), name, "WAV")
    assert not (tmp_path / name).exists()
    r = synth(model, model["bundle"], tmp_path / "voice.WAV")
    assert r.exit_code == 0 and sf.info(str(tmp_path / "voice.WAV")).format == "WAV", r.output


@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_a_device_this_machine_lacks_is_one_line(model, tmp_path, device):
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--device", device), f"--device {device}")
    one_line_error(runner.invoke(app, ["evaluate", "--model", str(model["bundle"]), "--data", str(model["data"]),
                                       "--device", device]), f"--device {device}")
    one_line_error(runner.invoke(app, ["train", "--data", str(model["data"]), "--run", str(tmp_path / "run"),
                                       "--epochs", "1", "--device", device]), f"--device {device}")


@pytest.mark.parametrize("option", [["--chunk-seconds", "0"], ["--chunk-seconds", "nan"], ["--transpose", "nan"],
                                    ["--transpose", "1000"], ["--stream", "--transpose", "-inf"]])
def test_nonsense_synthesis_options_are_one_line(model, tmp_path, option):
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", *option), option[-2])
    assert not (tmp_path / "o.wav").exists()


def test_a_file_name_with_a_line_break_still_gives_one_line(model, tmp_path):
    bad = tmp_path / "take\n2.wav"
    bad.write_bytes(b"not audio at all" * 100)
    one_line_error(synth(model, model["run"], tmp_path / "o.wav", "--reference", str(bad)), "take\\n2.wav")


def test_sources_and_outputs_named_in_another_encoding_are_converted(model, tmp_path):
    """A source folder from an old Latin-1 archive (caf\\xe9.wav): its output's name, lone surrogates in Python,
    made soundfile's strict UTF-8 path encoding raise UnicodeEncodeError, a traceback that ended the folder
    run before its other files."""
    import os

    src = tmp_path / "src"
    src.mkdir()
    latin = os.fsdecode(b"caf\xe9.wav")
    for name in (latin, "ok.wav"):
        (src / name).write_bytes(Path(model["src"]).read_bytes())
    r = synth(model, model["bundle"], tmp_path / "out", "--source", str(src))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([latin, "ok.wav"])
    for extra in ([], ["--stream"]):
        out = tmp_path / os.fsdecode(b"r\xe9sultat.wav")
        r = synth(model, model["bundle"], out, "--source", str(src / latin), *extra)
        assert r.exit_code == 0, r.output
        assert sf.info(os.fsencode(out)).frames > 0
        out.unlink()


def test_a_symbolic_link_that_loops_is_one_line(model, tmp_path):
    """A link that leads to itself (ln -s x.wav x.wav) as --out, --source or --reference: Path.resolve raised
    RuntimeError("Symlink loop"), a traceback before any work."""
    import os

    for name in ("loop.wav", "loop.json"):
        os.symlink(name, tmp_path / name)
    one_line_error(synth(model, model["bundle"], tmp_path / "loop.wav"), "loop.wav", "loops")
    # named as a link that does not resolve, not as a file that is not there
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--source", str(tmp_path / "loop.wav")),
                   "loop.wav", "does not resolve")
    one_line_error(synth(model, model["bundle"], tmp_path / "o.wav", "--reference", str(tmp_path / "loop.wav")),
                   "loop.wav", "does not resolve")
    one_line_error(runner.invoke(app, ["evaluate", "--run", str(model["run"]), "--out", str(tmp_path / "loop.json"),
                                       "--plot", str(tmp_path / "c.png")]), "loop.json", "loops")
    assert not (tmp_path / "o.wav").exists() and (tmp_path / "loop.wav").is_symlink()


def test_a_pipe_as_source_or_reference_is_one_line_and_does_not_hang(model, tmp_path):
    """A named pipe (mkfifo) with no writer: opening it to read the header blocked forever; a pipe from process
    substitution (--source <(sox ...)) was read for its header, then called missing ("no such file")."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "pipe.wav")
    base = [sys.executable, "-m", "voiceclone", "synthesize", "--model", str(model["bundle"]), "--threads", "1",
            "--out", str(tmp_path / "o.wav")]
    for args in (["--source", str(tmp_path / "pipe.wav"), "--reference", str(model["ref"])],
                 ["--source", str(model["src"]), "--reference", str(tmp_path / "pipe.wav")]):
        r = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "pipe.wav" in r.stderr and "not a regular file" in r.stderr, r.stderr
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="needs espeak-ng")
def test_text_that_starts_with_a_dash_or_has_no_words_is_handled(model, tmp_path):
    """--text "-5 degrees" reached espeak-ng as an option: it wrote no file and synthesize said a temporary
    file was 'missing'; text with nothing to say ("...") was 'silent' under that temporary file's name."""
    args = ["synthesize", "--model", str(model["bundle"]), "--reference", str(model["ref"]),
            "--out", str(tmp_path / "o.wav")]
    for text in ("-v hello there", "--help me"):
        r = runner.invoke(app, [*args, "--text", text])
        assert r.exit_code == 0, r.output
        assert sf.info(str(tmp_path / "o.wav")).duration > 0.3
    r = runner.invoke(app, [*args, "--text", "..."])
    one_line_error(r, "--text", "no speech")
    assert "/tmp" not in r.output.replace(str(tmp_path), "")
