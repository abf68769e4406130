"""Timbre matching (voiceclone/inference/timbre.py): the output's long-term spectrum moved onto the reference's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voiceclone import audio as A
from voiceclone.cli import app
from voiceclone.inference import timbre
from voiceclone.inference.bundle import load_model
from voiceclone.inference.stream import stream_file
from voiceclone.inference.synthesize import convert, embed_references

runner = CliRunner()


def test_full_strength_gives_the_reference_envelope_and_zero_leaves_the_mel_alone():
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(20, 200)).astype(np.float32) + np.linspace(-2, 2, 20, dtype=np.float32)[:, None]
    f0 = np.where(rng.random(200) < 0.6, 150.0, 0.0)
    target = rng.normal(size=20).astype(np.float32)
    target -= target.mean()
    own = timbre.envelope(mel, f0)
    assert own is not None and abs(float(own.mean())) < 1e-5
    full = timbre.match(torch.from_numpy(mel), own, target, 1.0).numpy()
    np.testing.assert_allclose(timbre.envelope(full, f0), target, atol=1e-4)
    half = timbre.envelope(timbre.match(torch.from_numpy(mel), own, target, 0.5).numpy(), f0)
    np.testing.assert_allclose(half, (own + target) / 2, atol=1e-4)
    # the level over all bins is the source's: the shift has no mean
    assert abs(float(full.mean() - mel.mean())) < 1e-4
    assert timbre.match(torch.from_numpy(mel), own, target, 0.0) is not None
    np.testing.assert_array_equal(timbre.match(torch.from_numpy(mel), own, target, 0.0).numpy(), mel)


def test_too_little_voicing_gives_no_envelope_and_no_change():
    mel = np.ones((10, 100), np.float32)
    f0 = np.zeros(100)
    f0[: timbre.MIN_VOICED_FRAMES - 1] = 120.0
    assert timbre.envelope(mel, f0) is None
    out = timbre.match(torch.from_numpy(mel), None, np.zeros(10, np.float32), 1.0)
    np.testing.assert_array_equal(out.numpy(), mel)


class Recorder(torch.nn.Module):
    """The model's vocoder, keeping every mel it is given."""

    def __init__(self, vocoder) -> None:
        super().__init__()
        self.vocoder, self.source, self.mels = vocoder, vocoder.source, []

    def forward(self, mel, *args):
        self.mels.append(mel[0].float().cpu().numpy())
        return self.vocoder(mel, *args)


@pytest.fixture(scope="module")
def conversions(tiny_run):
    """A source of speaker 5 converted into speaker 0 with matching off and full, offline and streamed:
    {key: (the mel the vocoder was given [n_mels, T], the source F0 [T])}."""
    model = load_model(tiny_run["run"])
    cfg = model.recipe.audio
    ref = embed_references(model, [tiny_run["corpus"] / "spk000" / f"spk000_00{i}.wav" for i in range(3)])
    y = A.clean(A.load_audio(tiny_run["corpus"] / "spk005" / "spk005_001.wav", cfg.sample_rate), model.recipe.prepare)
    f0 = A.f0(y, cfg)
    model.vocoder = recorder = Recorder(model.vocoder)
    out = {}
    for s in (0.0, 1.0):
        recorder.mels = []
        list(convert(model, y, ref, strength=s, chunk_seconds=60.0)[0])
        out[s] = recorder.mels[0]
        recorder.mels = []
        stream_file(model, ref, y, strength=s)
        # each window's first frames are the ones it emits (the rest is context or lookahead)
        out["stream", s] = np.concatenate([m for m in recorder.mels], 1)
    return ref, f0, out


def test_the_vocoder_is_given_the_reference_envelope(conversions):
    ref, f0, out = conversions
    assert ref.envelope is not None
    off, full = (np.abs(timbre.envelope(out[s], f0) - ref.envelope).mean() for s in (0.0, 1.0))
    assert full < 1e-3 < off, (off, full)


def test_the_stream_matches_as_offline_does(conversions):
    """The stream measures the output's envelope as it goes, so it ends near, not at, the offline shift."""
    ref, f0, out = conversions
    offline = out[1.0].mean(1) - out[0.0].mean(1)
    streamed = out["stream", 1.0].mean(1) - out["stream", 0.0].mean(1)
    assert np.abs(offline).mean() > 0.05
    assert np.abs(streamed - offline).mean() < 0.5 * np.abs(offline).mean(), (streamed, offline)


def test_an_out_of_range_strength_is_a_one_line_error(tiny_run, tmp_path):
    src = tiny_run["corpus"] / "spk005" / "spk005_001.wav"
    ref = tiny_run["corpus"] / "spk000" / "spk000_000.wav"
    for flags in ([], ["--stream"]):
        r = runner.invoke(app, ["synthesize", "--model", str(tiny_run["run"]), "--reference", str(ref),
                                "--source", str(src), "--out", str(tmp_path / "o.wav"), "--timbre", "3", *flags])
        assert r.exit_code == 2, r.output
        assert "--timbre 3" in r.output and len(r.output.strip().splitlines()) == 1
