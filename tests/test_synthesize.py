"""`voiceclone export` and `voiceclone synthesize`, on a briefly trained tiny run."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from voiceclone import audio as A
from voiceclone.inference.bundle import export, load_model
from voiceclone.cli import app
from voiceclone.config import AudioConfig
from voiceclone.inference.synthesize import Reference, convert, embed_references

QUIET = Console(quiet=True)
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_dataset) -> dict[str, Path]:
    """A corpus, and a run with both stages trained for a few short epochs."""
    from voiceclone.train.command import train

    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, speakers=6, utterances=6, seconds=2.0, seed=5)
    overrides = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=48", "vocoder.train.batch_size=4",
                 "vocoder.train.lr=2e-3"]
    train(root / "ds", root / "run", stage="acoustic", overrides=overrides, epochs=6, early_stop=False, console=QUIET)
    # ~150 vocoder steps: enough for the harmonic source's filter to render the given pitch
    train(root / "ds", root / "run", stage="vocoder", overrides=overrides, epochs=25, early_stop=False, console=QUIET)
    return {"root": root, "corpus": root / "corpus", "run": root / "run"}


def wav(corpus: Path, speaker: int, utt: int) -> Path:
    return corpus / f"spk{speaker:03d}" / f"spk{speaker:03d}_{utt:03d}.wav"


def synth(*args: str):
    return runner.invoke(app, ["synthesize", *args])


def test_bundle_round_trip_gives_the_same_output_as_the_run_folder(trained, tmp_path):
    bundle = export(trained["run"], tmp_path / "model.safetensors")
    args = ["--reference", str(wav(trained["corpus"], 0, 0)), "--source", str(wav(trained["corpus"], 5, 1))]
    assert synth("--model", str(trained["run"]), *args, "--out", str(tmp_path / "a.wav")).exit_code == 0
    r = synth("--model", str(bundle), *args, "--out", str(tmp_path / "b.wav"))
    assert r.exit_code == 0, r.output
    a, sr_a = sf.read(tmp_path / "a.wav")
    b, sr_b = sf.read(tmp_path / "b.wav")
    assert sr_a == sr_b == 16000
    np.testing.assert_array_equal(a, b)
    header = json.loads(tmp_path.joinpath("model.safetensors").read_bytes()[8:8 + struct.unpack(
        "<Q", tmp_path.joinpath("model.safetensors").read_bytes()[:8])[0]])["__metadata__"]
    assert header["format"] == "voiceclone-bundle" and json.loads(header["recipe"])["audio"]["sample_rate"] == 16000


class _Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "run/acoustic/best.pt"])
def test_a_malicious_pickle_never_runs(trained, tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"modules": _Evil(marker)}, f)
    torch.save({"x": _Evil(marker)}, tmp_path / "zip.pt")  # torch's own zip format, same payload
    model = tmp_path / "run" if name.startswith("run/") else path
    for candidate in (model, tmp_path / "zip.pt"):
        r = synth("--model", str(candidate), "--reference", str(wav(trained["corpus"], 0, 0)),
                  "--source", str(wav(trained["corpus"], 1, 0)), "--out", str(tmp_path / "o.wav"))
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) <= 2 and "Traceback" not in r.output
    assert not marker.exists()
    with pytest.raises(Exception):
        load_model(tmp_path / "zip.pt")
    assert not marker.exists()


def test_a_bundle_that_is_truncated_or_mismatched_is_refused(trained, tmp_path):
    bundle = export(trained["run"], tmp_path / "m.safetensors")
    data = bundle.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    args = ["--reference", str(wav(trained["corpus"], 0, 0)), "--source", str(wav(trained["corpus"], 1, 0)),
            "--out", str(tmp_path / "o.wav")]
    r = synth("--model", str(tmp_path / "cut.safetensors"), *args)
    assert r.exit_code == 2 and "cut.safetensors" in r.output
    # tensors that do not match the configuration's shapes
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(bundle), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["recipe"])
    recipe["acoustic"]["model"]["hidden"] = 128
    save_file(load_file(str(bundle)), str(tmp_path / "bad.safetensors"), metadata={**meta, "recipe": json.dumps(recipe)})
    r = synth("--model", str(tmp_path / "bad.safetensors"), *args)
    assert r.exit_code == 2 and "do not match" in r.output


def test_chunked_and_unchunked_conversion_agree(trained):
    model = load_model(trained["run"])
    cfg: AudioConfig = model.recipe.audio
    ref = embed_references(model, [wav(trained["corpus"], 0, 0)])
    # a 6 s source with pauses: three utterances of one speaker joined by silence
    parts = [A.load_audio(wav(trained["corpus"], 4, u), cfg.sample_rate) for u in range(3)]
    gap = np.zeros(cfg.sample_rate // 4, np.float32)
    y = np.concatenate([parts[0], gap, parts[1], gap, parts[2]])
    whole_blocks, info_whole = convert(model, y, ref, chunk_seconds=60.0)
    whole = np.concatenate(list(whole_blocks))
    chunk_blocks, info_chunk = convert(model, y, ref, chunk_seconds=2.5)
    chunked = np.concatenate(list(chunk_blocks))
    assert info_whole["chunks"] == 1 and info_chunk["chunks"] >= 3
    assert len(whole) == len(chunked) == len(y)
    mel_w = A.log_mel(torch.from_numpy(whole), cfg)
    mel_c = A.log_mel(torch.from_numpy(chunked), cfg)
    mel_src = A.log_mel(torch.from_numpy(y), cfg)
    # the two conversions are far closer to each other than either is to the source voice
    assert (mel_w - mel_c).abs().mean() < 0.35 * (mel_w - mel_src).abs().mean()


def test_parallel_workers_give_the_same_output_in_memory_and_streamed(trained, tmp_path):
    from voiceclone.inference.synthesize import synthesize_file

    model = load_model(trained["run"])
    ref = embed_references(model, [wav(trained["corpus"], 0, 0)])
    gap = np.zeros(4000, np.float32)
    y = np.concatenate([np.concatenate([A.load_audio(wav(trained["corpus"], 4, u), 16000), gap]) for u in range(6)])
    # the same pieces (chunk_seconds decides), so one worker and three must agree to rounding
    one = np.concatenate(list(convert(model, y, ref, chunk_seconds=3.0)[0]))
    three, info = convert(model, y, ref, chunk_seconds=3.0, workers=3)
    np.testing.assert_allclose(np.concatenate(list(three)), one, atol=2e-4)
    assert info["chunks"] >= 4
    # streamed windows are views into one reused buffer: each must be copied before the next is read
    src = tmp_path / "src.wav"
    sf.write(src, np.tile(y, 2), 16000)
    outs, threads = [], torch.get_num_threads()
    for workers in (1, 2):
        synthesize_file(model, ref, src, tmp_path / f"out{workers}.wav", chunk_seconds=3.0, stream=True,
                        workers=workers, subtype="FLOAT")
        outs.append(sf.read(tmp_path / f"out{workers}.wav")[0])
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-4)
    assert torch.get_num_threads() == threads  # the workers' one thread each is not left behind


def test_workers_cut_a_short_source_into_even_pieces(trained):
    model = load_model(trained["run"])
    ref = embed_references(model, [wav(trained["corpus"], 0, 0)])
    y = np.concatenate([A.load_audio(wav(trained["corpus"], 4, u), 16000) for u in range(6)])
    assert 8.0 <= len(y) / 16000 < 20.0  # under one chunk, long enough for two pieces of >= 4 s
    assert convert(model, y, ref)[1]["chunks"] == 1
    assert convert(model, y, ref, workers=2)[1]["chunks"] == 2
    assert convert(model, y[: 6 * 16000], ref, workers=2)[1]["chunks"] == 1  # 3 s pieces would not pay


def test_one_window_runs_on_the_process_threads_and_shared_windows_on_one_each(trained):
    from voiceclone.threads import torch_threads

    model = load_model(trained["run"])
    ref = embed_references(model, [wav(trained["corpus"], 0, 0)])
    y = np.concatenate([A.load_audio(wav(trained["corpus"], 4, u), 16000) for u in range(6)])
    seen, convert_mel = [], model.acoustic.convert
    model.acoustic.convert = lambda *a, **k: (seen.append(torch.get_num_threads()), convert_mel(*a, **k))[1]
    with torch_threads(2):
        list(convert(model, y[: 6 * 16000], ref, workers=2)[0])  # one window: two workers would leave a core idle
        assert seen == [2]
        seen.clear()
        list(convert(model, y, ref, workers=2)[0])
        assert seen == [1, 1]


def test_long_sources_stream_with_flat_memory(trained, tmp_path):
    import tracemalloc

    from voiceclone.inference.synthesize import synthesize_file

    model = load_model(trained["run"])
    ref = embed_references(model, [wav(trained["corpus"], 0, 0)])
    gap = np.zeros(4000, np.float32)
    unit = np.concatenate([np.concatenate([A.load_audio(wav(trained["corpus"], 4, u), 16000), gap]) for u in range(6)])
    peaks = []
    for reps in (2, 6):  # about 26 s and 78 s
        src = tmp_path / f"long{reps}.wav"
        sf.write(src, np.tile(unit, reps), 16000)
        tracemalloc.start()
        r = synthesize_file(model, ref, src, tmp_path / "out.wav", chunk_seconds=3.0, stream=True)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        out, sr = sf.read(tmp_path / "out.wav")
        assert len(out) == reps * len(unit) and r["streamed"]  # every sample, in its own timing
        assert np.abs(out).max() > 0.05
    assert peaks[1] < 1.25 * peaks[0], peaks  # three times the audio, the same memory


def test_folder_mode_converts_every_file_and_skips_a_corrupt_one(trained, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(wav(trained["corpus"], 3, 0), src / "a.wav")
    shutil.copy(wav(trained["corpus"], 4, 0), src / "sub" / "b.wav")
    (src / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    r = synth("--model", str(trained["run"]), "--reference", str(wav(trained["corpus"], 0, 0)),
              "--source", str(src), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out/a.wav").is_file() and (tmp_path / "out/sub/b.wav").is_file()
    assert not (tmp_path / "out/broken.wav").exists()
    assert "broken.wav" in r.output


def test_folder_mode_interrupted_says_how_many_files_are_done(trained, tmp_path, monkeypatch):
    """Ctrl-C over a folder exited 130 without a word on what was converted."""
    from voiceclone.inference import synthesize as S

    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        shutil.copy(wav(trained["corpus"], 3, k % 2), src / f"{k}.wav")
    real, calls = S.synthesize_file, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "synthesize_file", interrupted_at_the_second)
    console = Console(record=True, width=200)
    with pytest.raises(KeyboardInterrupt):
        S.synthesize(trained["run"], [wav(trained["corpus"], 0, 0)], tmp_path / "out", source=src, console=console)
    assert f"interrupted: 1 of 3 files converted into {tmp_path / 'out'}" in console.export_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.wav"]


def test_folder_mode_keeps_every_output_when_two_sources_share_a_stem(trained, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(wav(trained["corpus"], 3, 0), src / "take.wav")
    y, sr = sf.read(wav(trained["corpus"], 4, 0))
    sf.write(src / "take.flac", y, sr)
    shutil.copy(wav(trained["corpus"], 5, 0), src / "take.flac.wav")  # the name take.flac's output first took
    r = synth("--model", str(trained["run"]), "--reference", str(wav(trained["corpus"], 0, 0)),
              "--source", str(src), "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["take.flac.wav", "take.flac.wav.wav", "take.wav"]


@pytest.mark.parametrize("names", [["a.wav", "a.flac", "a.flac.wav"], ["a.wav", "a.flac", "a.flac.ogg"],
                                   ["a.flac", "a.ogg", "a.flac.wav", "a.flac.wav.wav"], ["x/a.wav", "x/a.mp3", "b.flac"]])
def test_no_two_sources_of_a_folder_share_an_output(names):
    """a.flac's output was renamed a.flac.wav beside a.wav, onto the output of a source a.flac.wav: one of the
    two conversions was overwritten by the other."""
    from voiceclone.inference.synthesize import _folder_targets

    src, out = Path("/src"), Path("/out")
    targets = _folder_targets(src, [src / n for n in names], out)
    assert len(set(targets.values())) == len(names)
    assert all(t.suffix == ".wav" and out in t.parents for t in targets.values())
    assert all(targets[src / n] == out / n for n in names if n.endswith(".wav"))  # a wav keeps its name


def _median_f0(path: Path, cfg: AudioConfig) -> float:
    f0 = A.f0(A.load_audio(path, cfg.sample_rate), cfg)
    return float(np.median(f0[f0 > 0]))


def test_pitch_options_move_the_output_f0_by_the_asked_interval(trained, tmp_path):
    model = load_model(trained["run"])
    cfg = model.recipe.audio
    ref = embed_references(model, [wav(trained["corpus"], 2, 0)])
    source = wav(trained["corpus"], 3, 1)
    y = A.clean(A.load_audio(source, cfg.sample_rate), model.recipe.prepare)
    src_f0 = A.f0(y, cfg)
    src_median = float(np.median(src_f0[src_f0 > 0]))

    def out_median(**kw) -> tuple[float, dict]:
        blocks, info = convert(model, y, ref, **kw)
        out = np.concatenate(list(blocks))
        f0 = A.f0(out, cfg)
        return float(np.median(f0[f0 > 0])), info

    kept, info = out_median(keep_pitch=True)
    assert info["pitch_shift_semitones"] == pytest.approx(0.0)
    assert abs(1200 * np.log2(kept / src_median)) < 30
    up, info = out_median(keep_pitch=True, transpose=3.0)
    assert info["pitch_shift_semitones"] == pytest.approx(3.0)
    assert abs(1200 * np.log2(up / kept) - 300) < 30
    moved, info = out_median()
    expected = 1200 * np.log2(ref.f0_median / src_median)
    assert info["pitch_shift_semitones"] * 100 == pytest.approx(expected, abs=1e-3)
    assert abs(1200 * np.log2(moved / src_median) - expected) < 30


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_text_is_spoken_by_a_base_voice_then_converted(trained, tmp_path):
    r = synth("--model", str(trained["run"]), "--reference", str(wav(trained["corpus"], 0, 0)),
              "--text", "Hello there, this is a test.", "--out", str(tmp_path / "t.wav"))
    assert r.exit_code == 0, r.output
    y, sr = sf.read(tmp_path / "t.wav")
    assert sr == 16000 and len(y) > sr  # more than a second of speech


def test_text_without_espeak_is_a_clear_error(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = synth("--model", str(trained["run"]), "--reference", str(wav(trained["corpus"], 0, 0)),
              "--text", "hi", "--out", str(tmp_path / "t.wav"))
    assert r.exit_code == 2 and "espeak-ng" in r.output and "install" in r.output


def test_bad_references_and_sources_are_one_line_errors(trained, tmp_path):
    good = str(wav(trained["corpus"], 0, 0))
    src = str(wav(trained["corpus"], 1, 0))
    sr = 16000
    sf.write(tmp_path / "silent.wav", np.zeros(sr * 3, np.float32), sr)
    short, _ = sf.read(wav(trained["corpus"], 0, 1))
    sf.write(tmp_path / "short.wav", short[: int(0.6 * sr)], sr)
    model = str(trained["run"])
    cases = [
        (["--reference", str(tmp_path / "nope.wav"), "--source", src], "nope.wav"),
        (["--reference", str(tmp_path / "silent.wav"), "--source", src], "silent"),
        (["--reference", str(tmp_path / "short.wav"), "--source", src], "at least 1 s"),
        (["--reference", good, "--source", str(tmp_path / "missing.wav")], "missing.wav"),
        (["--reference", good, "--source", src, "--text", "hi"], "exactly one"),
    ]
    for args, expected in cases:
        r = synth("--model", model, *args, "--out", str(tmp_path / "o.wav"))
        assert r.exit_code == 2, (args, r.output)
        assert expected in r.output and "Traceback" not in r.output
    r = synth("--model", str(tmp_path / "nomodel"), "--reference", good, "--source", src, "--out",
              str(tmp_path / "o.wav"))
    assert r.exit_code == 2 and "nomodel" in r.output


def test_a_short_reference_warns(trained, tmp_path):
    y, sr = sf.read(wav(trained["corpus"], 0, 1))
    sf.write(tmp_path / "two.wav", y[: int(1.8 * sr)], sr)
    model = load_model(trained["run"])
    ref = embed_references(model, [tmp_path / "two.wav"])
    assert isinstance(ref, Reference) and ref.warnings and "3 s" in ref.warnings[0]


def test_an_unvoiced_reference_warns_that_register_and_timbre_stay(trained, tmp_path):
    """Whispered or noisy speech has no pitch to move the register to and no voiced envelope to match: it is
    used for the speaker vector alone, and says so, where it used to convert silently."""
    sr = 16000
    noise = np.random.default_rng(0).normal(0, 0.1, 4 * sr).astype(np.float32)
    noise *= np.repeat(np.random.default_rng(1).uniform(0.2, 1.0, 40), sr // 10)  # syllable-like bursts
    sf.write(tmp_path / "whisper.wav", noise, sr)
    ref = embed_references(load_model(trained["run"]), [tmp_path / "whisper.wav"])
    assert ref.f0_median is None and ref.envelope is None
    assert any("no voiced speech" in w and "whisper.wav" in w for w in ref.warnings)
    voiced = embed_references(load_model(trained["run"]), [wav(trained["corpus"], 0, 1)])
    assert not any("voiced" in w for w in voiced.warnings)


def test_several_short_references_count_together(trained, tmp_path):
    """Eight clips of 0.4 s of one voice (3.2 s of speech) are one usable reference; one such clip is not."""
    y, sr = sf.read(wav(trained["corpus"], 0, 1), dtype="float32")
    speech = y[np.abs(y) > 0].copy()
    clips = []
    for k in range(8):
        piece = np.tile(speech, 3)[k * int(0.4 * sr):(k + 1) * int(0.4 * sr)]
        sf.write(tmp_path / f"digit{k}.wav", piece, sr)
        clips.append(tmp_path / f"digit{k}.wav")
    model = load_model(trained["run"])
    ref = embed_references(model, clips)
    assert ref.seconds > 2.5 and torch.isfinite(ref.vector).all()
    assert ref.warnings == []  # 3 s or more in all: no warning
    few = embed_references(model, clips[:4])
    assert len(few.warnings) == 1 and "in all" in few.warnings[0]
    r = synth("--model", str(trained["run"]), "--reference", str(clips[0]), "--source",
              str(wav(trained["corpus"], 1, 0)), "--out", str(tmp_path / "o.wav"))
    assert r.exit_code == 2 and "at least 1 s" in r.output and "Traceback" not in r.output


def test_the_summary_wraps_long_output_names_and_says_its_units():
    """On an 80-column terminal a folder's outputs were cut to '/tmp/out/converted/103…', all alike."""
    from voiceclone.inference.synthesize import _print_summary

    console = Console(width=80, record=True)
    name = "/tmp/some/long/folder/converted/1034-121119-0000.wav"
    _print_summary(console, [{"output": name, "seconds": 7.88, "x_real_time": 180.0, "reference_seconds": 2.4,
                              "pitch_shift_semitones": 15.88}])
    shown = console.export_text()
    assert name in "".join(line.split("│")[1].strip() for line in shown.splitlines() if line.startswith("│"))
    assert "+15.88 st" in shown and "semitones" in shown and "seconds of speech" in shown
