"""The vocoder's networks and GAN losses: shapes, the frame grid, the harmonic source, gradients, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voiceclone import audio as A
from voiceclone.config import AudioConfig, VocoderModelConfig, build
from voiceclone.models.discriminators import Discriminators
from voiceclone.models.modules import AdaptiveLayerNorm, ChannelLayerNorm, ConvNeXtBlock, pitch_features
from voiceclone.models.vocoder import ISTFT, HarmonicSource, Vocoder, fill_unvoiced
from voiceclone.stages.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

AUDIO = AudioConfig()
ODD_GRID = AudioConfig(sample_rate=16000, n_fft=1000, win_length=800, hop_length=255, fmax=8000)


def tiny(**overrides) -> VocoderModelConfig:
    return build(VocoderModelConfig, {"size": "tiny", **overrides})


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def contour(batch: int, frames: int) -> torch.Tensor:
    """F0 in Hz with an unvoiced stretch in the middle."""
    f0 = 120.0 * 2 ** torch.linspace(0, 1, frames).expand(batch, frames).clone()
    f0[:, frames // 3 : frames // 2] = 0.0
    return f0


@pytest.mark.parametrize("audio", [AUDIO, ODD_GRID], ids=["22k", "odd-hop"])
@pytest.mark.parametrize("frames", [1, 2, 3, 17, 64])
def test_output_is_exactly_frames_times_hop(audio: AudioConfig, frames: int) -> None:
    torch.manual_seed(0)
    vocoder = Vocoder(tiny(), audio).eval()
    mel = torch.randn(2, audio.n_mels, frames) - 5
    with torch.no_grad():
        out = vocoder(mel, contour(2, frames))
    assert out.shape == (2, frames * audio.hop_length)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0


def test_empty_input_gives_empty_audio() -> None:
    out = Vocoder(tiny(), AUDIO)(torch.zeros(1, AUDIO.n_mels, 0), torch.zeros(1, 0))
    assert out.shape == (1, 0)


def test_wrong_shapes_are_refused() -> None:
    vocoder = Vocoder(tiny(), AUDIO)
    with pytest.raises(ValueError, match="mel"):
        vocoder(torch.zeros(1, AUDIO.n_mels + 1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="f0_hz"):
        vocoder(torch.zeros(1, AUDIO.n_mels, 4), torch.zeros(1, 5))


@pytest.mark.parametrize("audio", [AUDIO, ODD_GRID], ids=["22k", "odd-hop"])
def test_istft_inverts_the_log_mel_frame_grid(audio: AudioConfig) -> None:
    """Frames taken exactly as log_mel takes them come back as the same samples, edges included."""
    frames = 9
    y = torch.randn(2, frames * audio.hop_length)
    left = (audio.n_fft - audio.hop_length) // 2
    padded = F.pad(y.unsqueeze(1), (left, audio.n_fft - audio.hop_length - left), mode="reflect").squeeze(1)
    istft = ISTFT(audio.n_fft, audio.hop_length, audio.win_length)
    spec = torch.stft(padded, audio.n_fft, hop_length=audio.hop_length, win_length=audio.win_length,
                      window=torch.hann_window(audio.win_length), center=False, return_complex=True)
    assert spec.shape[-1] == frames  # the same frame count as log_mel
    assert torch.allclose(istft(spec.transpose(1, 2)), y, atol=1e-5)


def test_source_renders_the_given_f0() -> None:
    frames = 60
    f0 = torch.full((1, frames), 180.0)
    f0[0, 40:] = 0.0
    signal = HarmonicSource(AUDIO).signal(f0)[0]
    left = (AUDIO.n_fft - AUDIO.hop_length) // 2
    y = signal[left : left + frames * AUDIO.hop_length].numpy()
    est = A.f0(y, AUDIO)
    voiced = est[5:35]
    assert (voiced > 0).all() and np.abs(voiced / 180.0 - 1).max() < 0.01
    # unvoiced frames are silent once the fade of one hop is over
    assert np.abs(y[42 * AUDIO.hop_length :]).max() < 1e-6


def test_source_stft_shape_and_grid() -> None:
    source = HarmonicSource(AUDIO)
    f0 = contour(3, 11)
    spec = source(f0)
    assert spec.shape == (3, 11, AUDIO.n_fft // 2 + 1) and spec.is_complex()
    # the STFT is the source's own, framed as log_mel frames audio
    signal = source.signal(f0)
    ref = torch.stft(signal, AUDIO.n_fft, hop_length=AUDIO.hop_length, win_length=AUDIO.win_length,
                     window=torch.hann_window(AUDIO.win_length), center=False, return_complex=True)
    assert torch.allclose(spec, ref.transpose(1, 2), atol=1e-3)


def test_pitch_features_and_fill() -> None:
    f0 = torch.tensor([[0.0, 150.0, 300.0, 0.0, 75.0, 0.0]])
    feats = pitch_features(f0)
    assert feats.shape == (1, 2, 6)
    assert torch.allclose(feats[0, 0], torch.tensor([0.0, 0.0, 1.0, 0.0, -1.0, 0.0]))
    assert torch.equal(feats[0, 1], torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(fill_unvoiced(f0), torch.tensor([[150.0, 150.0, 300.0, 300.0, 75.0, 75.0]]))
    assert torch.equal(fill_unvoiced(torch.zeros(1, 3)), torch.full((1, 3), 150.0))


def test_untrained_vocoder_has_the_harmonic_path_switched_off() -> None:
    """The filter starts at zero: changing F0 moves only the backbone's pitch inputs, never the source."""
    vocoder = Vocoder(tiny(), AUDIO)
    assert vocoder.filter.weight.abs().sum() == 0 and vocoder.filter.bias.abs().sum() == 0


def test_generator_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    vocoder = Vocoder(tiny(), AUDIO)
    frames = 16
    real = 0.1 * torch.randn(2, frames * AUDIO.hop_length)
    mel = A.log_mel(real, AUDIO)
    fake = vocoder(mel, contour(2, frames))
    (A.log_mel(fake, AUDIO) - mel).abs().mean().backward()
    for name, p in vocoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the zero-initialized filter learns from the first step
    assert vocoder.filter.weight.grad.abs().sum() > 0


def test_discriminator_outputs() -> None:
    cfg = tiny()
    disc = Discriminators(cfg)
    subs = len(cfg.mpd_periods) + len(cfg.mrd_resolutions)
    for length in (32 * AUDIO.hop_length, 301):  # a training segment, and a clip shorter than one FFT
        logits, feats = disc(0.1 * torch.randn(3, length))
        assert len(logits) == len(feats) == len(disc.names) == subs
        for score, maps in zip(logits, feats):
            assert score.dim() == 2 and score.shape[0] == 3 and torch.isfinite(score).all()
            assert len(maps) >= 2 and all(m.shape[0] == 3 for m in maps)


def test_discriminators_score_each_item_on_its_own() -> None:
    """The trainer scores real and generated audio in one batch and splits it: no mixing across items."""
    disc = Discriminators(tiny()).eval()
    a, b = 0.1 * torch.randn(2, 4096), 0.1 * torch.randn(3, 4096)
    with torch.no_grad():
        joint, joint_feats = disc(torch.cat([a, b]))
        alone, alone_feats = disc(a)
    for x, y in zip(joint, alone):
        assert torch.allclose(x[:2], y, atol=1e-5)
    assert torch.allclose(joint_feats[0][1][:2], alone_feats[0][1], atol=1e-5)


def test_losses_are_finite_scalars_with_gradients() -> None:
    torch.manual_seed(0)
    disc = Discriminators(tiny())
    real = 0.1 * torch.randn(2, 4096)
    fake = (0.1 * torch.randn(2, 4096)).requires_grad_()
    logits, feats = disc(torch.cat([real, fake]))
    d_loss = discriminator_loss([x[:2] for x in logits], [x[2:] for x in logits])
    g_loss = generator_adversarial_loss([x[2:] for x in logits])
    fm_loss = feature_matching_loss([[f[:2] for f in fs] for fs in feats], [[f[2:] for f in fs] for fs in feats])
    for loss in (d_loss, g_loss, fm_loss):
        assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    fm_loss.backward(retain_graph=True)
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    d_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters() if p.grad is not None)


def test_least_squares_targets() -> None:
    ones, zeros = [torch.ones(2, 5), torch.ones(2, 7)], [torch.zeros(2, 5), torch.zeros(2, 7)]
    assert discriminator_loss(ones, zeros) == 0
    assert discriminator_loss(zeros, ones) == 2  # each term 1, averaged over sub-discriminators
    assert generator_adversarial_loss(ones) == 0 and generator_adversarial_loss(zeros) == 1
    feats = [[torch.randn(2, 3), torch.randn(2, 4)]]
    assert feature_matching_loss(feats, feats) == 0
    with pytest.raises(ValueError):
        discriminator_loss(ones, zeros[:1])


def test_feature_matching_treats_real_features_as_targets() -> None:
    real = torch.randn(2, 3, requires_grad=True)
    fake = torch.randn(2, 3, requires_grad=True)
    feature_matching_loss([[real]], [[fake]]).backward()
    assert real.grad is None and fake.grad is not None


def test_sizes() -> None:
    tiny_params = n_params(Vocoder(tiny(), AUDIO))
    base_params = n_params(Vocoder(build(VocoderModelConfig, {"size": "base"}), AUDIO))
    print(f"vocoder generator parameters: tiny {tiny_params:,}, base {base_params:,}")
    assert tiny_params < 1_000_000
    assert 4_000_000 < base_params < 20_000_000


def test_shared_modules() -> None:
    x = torch.randn(2, 16, 10)
    block = ConvNeXtBlock(16, 48, layer_scale=0.1)
    assert block(x).shape == x.shape
    cond_block = ConvNeXtBlock(16, 48, cond_dim=8)
    for cond in (torch.randn(2, 8), torch.randn(2, 10, 8)):
        assert cond_block(x, cond).shape == x.shape
    with pytest.raises(ValueError):
        cond_block(x)
    # an untrained adaptive norm is a plain layer norm, whatever the condition
    norm = AdaptiveLayerNorm(16, 8)
    assert torch.allclose(norm(x.transpose(1, 2), torch.randn(2, 8)), F.layer_norm(x.transpose(1, 2), (16,), eps=1e-6))
    assert torch.allclose(ChannelLayerNorm(16)(x), F.layer_norm(x.transpose(1, 2), (16,)).transpose(1, 2), atol=1e-6)
