"""`voiceclone export RUN --onnx DIR` and examples/onnx_convert.py, on a briefly trained run.

Tolerances: every graph output within 1e-4 of torch on real features (float32 rounding is ~1e-6); the numpy mel
within 1e-3 of the project's log-mel (float64 against float32 near the log floor); the whole ONNX round trip
(numpy front end, the four graphs, numpy harmonic source and inverse STFT) within 1e-3 of `synthesize`'s wav,
sample by sample, when given the project's F0. With Praat's F0 (the example's default) the output stays within
0.3 log-mel L1 and 0.95 speaker similarity of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from voiceclone import audio as A  # noqa: E402
from voiceclone.inference.bundle import load_model  # noqa: E402
from voiceclone.cli import app  # noqa: E402
from voiceclone.inference.stream import compare, content_code  # noqa: E402
from voiceclone.models.acoustic import energy_features, pitch_features  # noqa: E402
from voiceclone.inference.synthesize import convert, embed_references  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from onnx_convert import OnnxVoice  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored for the tests after these
    folder = tmp_path_factory.mktemp("onnx") / "model"
    r = runner.invoke(app, ["export", str(tiny_run["run"]), "--onnx", str(folder)])
    assert r.exit_code == 0, r.output
    assert "vocoder: onnxruntime matches torch" in r.output
    model = load_model(tiny_run["run"])
    corpus = tiny_run["corpus"]
    cfg = model.recipe.audio
    ref_path, src_path = corpus / "spk000" / "spk000_000.wav", corpus / "spk005" / "spk005_001.wav"
    source = A.clean(A.load_audio(src_path, cfg.sample_rate), model.recipe.prepare)
    yield {"folder": folder, "model": model, "voice": OnnxVoice(folder), "ref_path": ref_path, "src_path": src_path,
           "source": source, "ref": embed_references(model, [ref_path])}
    torch.set_num_threads(threads)


def test_the_folder_holds_four_graphs_and_their_config(exported):
    names = sorted(p.name for p in exported["folder"].iterdir())
    assert names == ["config.json", "content_encoder.onnx", "decoder.onnx", "mel_basis.npy", "speaker_encoder.onnx",
                     "vocoder.onnx"]
    config = json.loads((exported["folder"] / "config.json").read_text())
    assert config["audio"]["sample_rate"] == 16000 and config["graphs"]["decoder"]["inputs"] == [
        "content", "f0_hz", "energy", "speaker"]


def test_each_graph_matches_torch_on_real_features(exported):
    model, voice, y = exported["model"], exported["voice"], exported["source"]
    cfg = model.recipe.audio
    with torch.inference_mode():
        mel, energy = A.log_mel(torch.from_numpy(y), cfg, return_energy=True)
        f0 = torch.from_numpy(A.f0(y, cfg))
        ac = model.acoustic
        normalized = (mel - mel.mean(-1, keepdim=True)) / torch.sqrt(mel.var(-1, unbiased=False, keepdim=True) + 1e-5)
        code = content_code(ac.content_encoder, normalized.unsqueeze(0))[0]
        content = ac.content_encoder(mel.unsqueeze(0))[0]
        speaker = ac.speaker_encoder(mel.unsqueeze(0))[0]
        out = ac.decoder(content[None], pitch_features(f0[None]), energy_features(energy[None]), speaker[None])[0]
        wav = model.render(out[None], f0[None])[0]  # the vocoder and the fit to its mel
    close = lambda got, want: np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)  # noqa: E731
    close(voice.run("content_encoder", mel_normalized=normalized.numpy())[0][0], code)
    close(voice._norm(code.numpy()), content)
    close(voice.run("speaker_encoder", mel=mel.numpy())[0][0], speaker)
    close(voice.run("decoder", content=content.numpy(), f0_hz=f0.numpy(), energy=(energy - energy.mean()).numpy(),
                    speaker=speaker.numpy())[0][0], out)
    np.testing.assert_allclose(voice.vocode(out.numpy(), f0.numpy()), wav.numpy(), atol=1e-3, rtol=0)


def test_the_numpy_front_end_matches_the_projects(exported):
    model, voice, y = exported["model"], exported["voice"], exported["source"]
    cfg = model.recipe.audio
    raw = A.load_audio(exported["src_path"], cfg.sample_rate)
    np.testing.assert_array_equal(voice.load(exported["src_path"]), raw)
    np.testing.assert_allclose(voice.clean(raw), A.clean(raw, model.recipe.prepare), atol=1e-6)
    for piece in (y, y[:5000], y[:300]):  # reflect and (shorter than the padding) constant edges
        with torch.inference_mode():
            mel, energy = A.log_mel(torch.from_numpy(piece.copy()), cfg, return_energy=True)
        got_mel, got_energy = voice.log_mel(piece)
        np.testing.assert_allclose(got_mel, mel.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(got_energy, energy.numpy(), atol=1e-4, rtol=0)
    # Praat's F0 (the example's) against the project's tracker: the same contour to a few cents
    ours, praat = A.f0(y, cfg), voice.f0(y)
    both = (ours > 0) & (praat > 0)
    assert np.median(np.abs(1200 * np.log2(ours[both] / praat[both]))) < 10
    assert np.mean((ours > 0) != (praat > 0)) < 0.1
    f0 = torch.linspace(90, 300, 80)
    f0[30:36] = 0
    with torch.inference_mode():
        want = model.vocoder.source.signal(f0[None])[0]
    np.testing.assert_allclose(voice.source(f0.numpy()), want.numpy(), atol=1e-2, rtol=0)  # float32 phase in torch


def test_the_onnx_round_trip_gives_the_same_wav(exported):
    model, voice, y, ref = exported["model"], exported["voice"], exported["source"], exported["ref"]
    cfg = model.recipe.audio
    project_f0 = lambda x: A.f0(x, cfg)  # noqa: E731
    offline = np.concatenate(list(convert(model, y, ref)[0]))
    speaker, ref_f0, env = voice.embed([voice.clean(voice.load(exported["ref_path"]))], f0=project_f0)
    np.testing.assert_allclose(speaker, ref.vector.numpy(), atol=1e-4)
    assert ref_f0 == pytest.approx(ref.f0_median)
    np.testing.assert_allclose(env, ref.envelope, atol=2e-3)
    got = voice.convert(y, speaker, ref_f0, f0=project_f0, reference_envelope=env)
    assert len(got) == len(offline)
    np.testing.assert_allclose(got, offline, atol=1e-3, rtol=0)


def test_the_example_script_converts_a_file_without_torch(exported, tmp_path):
    out = tmp_path / "cloned.wav"
    script = ("import runpy, sys\n"
              f"sys.argv = ['onnx_convert.py', {str(exported['folder'])!r}, '--reference', {str(exported['ref_path'])!r},"
              f" '--source', {str(exported['src_path'])!r}, '--out', {str(out)!r}]\n"
              "try:\n    runpy.run_path(" + repr(str(ROOT / "examples" / "onnx_convert.py")) +
              ", run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
              "assert 'torch' not in sys.modules, 'the example imported torch'\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    import soundfile as sf

    got, rate = sf.read(str(out), dtype="float32")
    offline = np.concatenate(list(convert(exported["model"], exported["source"], exported["ref"])[0]))
    assert rate == 16000 and len(got) == len(offline)
    agreement = compare(exported["model"], got, offline)
    assert agreement["mel_l1"] < 0.3 and agreement["secs"] > 0.95, agreement


def _folder_with(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / name).write_text("{}")
    return folder


def test_onnx_export_errors_are_one_line(tiny_run, tmp_path):
    for args, message in (([str(tiny_run["run"])], "give exactly one of --out"),
                          ([str(tiny_run["run"]), "--out", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "o")],
                           "give exactly one of --out"),
                          ([str(tiny_run["run"]), "--onnx", str(tmp_path / "model.onnx")], "names a folder"),
                          ([str(tmp_path / "nothing"), "--onnx", str(tmp_path / "o")], "no such run folder"),
                          # it wrote its graphs and config.json in among the user's recordings
                          ([str(tiny_run["run"]), "--onnx", str(_folder_with(tmp_path / "takes", "a.wav"))],
                           "holds a.wav; --onnx writes into a new or empty folder"),
                          ([str(tiny_run["run"]), "--onnx", str(_folder_with(tmp_path / "app", "config.json"))],
                           "holds a config.json of another program")):
        r = runner.invoke(app, ["export", *args])
        assert r.exit_code == 2 and message in r.output, r.output
        assert "Traceback" not in r.output


def test_the_example_scripts_bad_options_and_outputs_are_one_line(exported, tmp_path, capsys):
    """--out naming a folder or an .mp3 was a soundfile traceback (exit 1) after the whole conversion;
    --transpose 1e6 an OverflowError traceback; --transpose nan and --timbre nan wrote a wrong wav, exit 0."""
    import onnx_convert

    (tmp_path / "taken").mkdir()
    base = [str(exported["folder"]), "--reference", str(exported["ref_path"]), "--source", str(exported["src_path"])]
    for extra, words in ((["--out", str(tmp_path / "taken")], ["taken", "folder"]),
                         (["--out", str(tmp_path / "o.mp3")], ["o.mp3", "WAV"]),
                         (["--out", str(tmp_path / "o.wav"), "--transpose", "1e6"], ["--transpose"]),
                         (["--out", str(tmp_path / "o.wav"), "--transpose", "nan"], ["--transpose"]),
                         (["--out", str(tmp_path / "o.wav"), "--timbre", "nan"], ["--timbre"])):
        assert onnx_convert.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any((tmp_path / "taken").iterdir())
    assert onnx_convert.main(base + ["--out", str(tmp_path / "o.wav")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav", "taken"]  # written beside, then renamed



def test_the_example_script_names_an_unusable_source_with_its_reason(exported, tmp_path, capsys):
    """A clip shorter than one analysis window failed with numpy's words alone, an empty one printed a numpy
    warning first, and NaN samples read as 'silent audio', none naming the file."""
    import soundfile as sf

    import onnx_convert

    rate = 16000
    sources = {"short.wav": np.full(160, 0.1, np.float32), "empty.wav": np.zeros(0, np.float32),
               "nan.wav": np.full(rate, np.nan, np.float32)}
    for (name, y), why in zip(sources.items(), ("analysis window", "analysis window", "not numbers")):
        sf.write(str(tmp_path / name), y, rate, subtype="FLOAT")
        args = [str(exported["folder"]), "--reference", str(exported["ref_path"]), "--source", str(tmp_path / name),
                "--out", str(tmp_path / "o.wav")]
        assert onnx_convert.main(args) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and name in err and why in err, err


def test_an_export_that_fails_leaves_no_config_json_even_over_an_earlier_one(exported, tiny_run, tmp_path,
                                                                             monkeypatch):
    """Graphs were written in place and config.json beside them before the parity check: an export that
    failed or was stopped left a folder that looked whole, its graphs from two exports."""
    from voiceclone.errors import UserError
    from voiceclone.inference import onnx_export

    folder = tmp_path / "model"
    shutil.copytree(exported["folder"], folder)
    monkeypatch.setattr(onnx_export, "check_parity", lambda model, out: {"vocoder": 1.0})
    with pytest.raises(UserError, match="disagrees"):
        onnx_export.export_onnx(tiny_run["run"], folder)
    names = sorted(p.name for p in folder.iterdir())
    assert "config.json" not in names and not [n for n in names if n.endswith(".tmp")], names
    import onnx_convert

    with pytest.raises(ValueError, match="did not finish"):
        onnx_convert.OnnxVoice(folder)


@pytest.mark.parametrize("where", ["vocoder.", "voice"])
def test_a_model_whose_graphs_give_nan_is_not_exported(tiny_run, tmp_path, where):
    """Weights of 1e30 are finite, so the model loaded; the vocoder's NaN passed the parity check as 'max
    |difference| nan', and a learned voice of 1e30 was copied into config.json, exit 0."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    bundle = tmp_path / "m.safetensors"
    assert runner.invoke(app, ["export", str(tiny_run["run"]), "--out", str(bundle)]).exit_code == 0
    with safe_open(str(bundle), "pt") as f:
        header = f.metadata()
    tensors, meta = load_file(str(bundle)), json.loads(header["meta"])
    if where == "voice":
        tensors["acoustic.voice"] = torch.full((json.loads(header["recipe"])["acoustic"]["model"]["speaker_dim"],),
                                               1e30)
        meta["acoustic"]["learned_voice"] = True
    else:
        for k, t in tensors.items():
            if k.startswith(where) and t.dim() > 1:
                tensors[k] = torch.full_like(t, 1e30)
    save_file(tensors, str(tmp_path / "big.safetensors"), metadata={**header, "meta": json.dumps(meta)})
    r = runner.invoke(app, ["export", str(tmp_path / "big.safetensors"), "--onnx", str(tmp_path / "o")])
    assert r.exit_code == 2 and "big.safetensors" in r.output and "non-finite" in r.output, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "o" / "config.json").exists()
