"""The neural vocoder: log-mel + F0 -> waveform, Vocos-style, with a harmonic source so pitch is exact.

A ConvNeXt backbone runs at frame rate and two linear heads predict, per frame and STFT bin, two things:

- a free complex spectrum (log-magnitude and phase, exactly Vocos's ISTFTHead), for everything aperiodic:
  breath, bursts, and whatever the source below cannot express;
- a complex filter that multiplies the STFT of a band-limited pulse train built sample by sample from
  the given F0 (`HarmonicSource`).

The second path is why the pitch rendered is the pitch given. A plain Vocos has to place every harmonic
peak and advance every harmonic's phase from frame to frame by itself, from a mel that only resolves
the lowest harmonics; here frequencies and phase advance come from the source, and the network only
learns a spectral envelope, which is smooth and easy at frame rate. The filter projection starts at
zero, so an untrained vocoder is a plain Vocos and the harmonic path is switched on by training.

Both the source STFT and the inverse STFT use the frame grid of `audio.log_mel`: frame t is a window
of n_fft samples centred at (t + 0.5) * hop, so T frames give exactly T * hop samples ("same" padding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voiceclone.config import AudioConfig, VocoderModelConfig
from voiceclone.models.modules import F0_REF_HZ, ChannelLayerNorm, ConvNeXtBlock, pitch_features

F0_SOURCE_MIN_HZ = 20.0  # below this a pulse train needs absurdly many harmonics; no voice goes there
HARMONIC_AMPLITUDE = 0.1  # each source harmonic's amplitude: loud speech's, so the learnt filter is O(1)
MAX_MAGNITUDE = 1e2  # Vocos's clip on the free spectrum: an early overshoot cannot blow up the iSTFT


def fill_unvoiced(f0_hz: Tensor) -> Tensor:
    """Each unvoiced frame takes the F0 of the nearest voiced frame before it (after it, at the start).

    f0_hz [B, T] -> [B, T], positive everywhere; rows without a voiced frame become F0_REF_HZ.
    The source fades out over unvoiced frames anyway, but this keeps its frequency from gliding
    towards 0 Hz during the fade.
    """
    voiced = f0_hz > 0
    t = f0_hz.shape[-1]
    idx = torch.arange(t, device=f0_hz.device).expand_as(f0_hz)
    before = torch.where(voiced, idx, torch.full_like(idx, -1)).cummax(dim=-1).values
    after = torch.where(voiced, idx, torch.full_like(idx, t)).flip(-1).cummin(dim=-1).values.flip(-1)
    src = torch.where(before >= 0, before, after).clamp(max=t - 1)
    filled = f0_hz.gather(-1, src)
    return torch.where(filled > 0, filled, torch.full_like(filled, F0_REF_HZ))


def _window(n_fft: int, win_length: int) -> Tensor:
    """Periodic Hann of win_length, zero-padded to n_fft around its centre (what torch.stft does)."""
    offset = (n_fft - win_length) // 2
    return F.pad(torch.hann_window(win_length), (offset, n_fft - win_length - offset))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: T frames -> exactly T * hop samples, on the log_mel frame grid.

    torch.istft cannot do this: with center=False its NOLA check fails at the outer edges that this crop
    throws away (pytorch issue 62323), hence an explicit overlap-add, as in Vocos. Frames are zero-padded
    to a whole number of hops so the overlap-add is a few strided additions: F.fold was several times
    slower on CPU.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop_length
        self.left = (n_fft - hop_length) // 2  # the same split as log_mel's padding
        self.hops = -(-n_fft // hop_length)  # hops spanned by one frame
        self.register_buffer("window", _window(n_fft, win_length), persistent=False)

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """frames [B, T, n_fft] -> [B, (T + hops - 1) * hop], frame t starting at sample t * hop."""
        batch, count, _ = frames.shape
        if self.hops * self.hop != self.n_fft:
            frames = F.pad(frames, (0, self.hops * self.hop - self.n_fft))
        frames = frames.reshape(batch, count, self.hops, self.hop)
        out = frames.new_zeros(batch, count + self.hops - 1, self.hop)
        for j in range(self.hops):
            out[:, j : j + count] += frames[:, :, j]
        return out.view(batch, -1)

    def forward(self, spec: Tensor) -> Tensor:
        """spec [B, T, n_fft // 2 + 1] complex (time before frequency) -> audio [B, T * hop] float32."""
        count = spec.shape[1]
        y = self._overlap_add(torch.fft.irfft(spec, n=self.n_fft, dim=-1) * self.window)
        envelope = self._overlap_add(self.window.square().expand(1, count, -1))[0]
        keep = slice(self.left, self.left + count * self.hop)
        # the envelope is zero only where every window is zero, and there y is zero too
        return y[:, keep] / envelope[keep].clamp(min=1e-8)


class HarmonicSource(nn.Module):
    """STFT of a band-limited pulse train that follows a frame-rate F0 track exactly.

    F0 is interpolated linearly between frame centres to one value per sample, integrated to a phase,
    and every harmonic below Nyquist is summed in closed form (the Dirichlet kernel), the top one faded
    in by its fractional part so harmonics appear and vanish without clicks as F0 moves. Unvoiced
    frames fade the source to silence. No parameters.
    """

    def __init__(self, audio: AudioConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = audio.n_fft, audio.hop_length
        self.sample_rate = audio.sample_rate
        self.left = (audio.n_fft - audio.hop_length) // 2
        right = audio.n_fft - audio.hop_length - self.left
        self.margin = -(-max(self.left, right) // self.hop) + 1  # edge frames covering the overhang
        self.register_buffer("window", _window(audio.n_fft, audio.win_length), persistent=False)
        # frame t is centred at sample index (t + 0.5) * hop - 0.5 (as in F.interpolate), so the samples
        # from t * hop + hop // 2 on lie between centres t and t + 1, the j-th at this fraction of the way
        hop = audio.hop_length
        ramp = (torch.arange(hop) + hop // 2 - hop / 2 + 0.5) / hop
        self.register_buffer("ramp", ramp, persistent=False)
        self.register_buffer("ramp_sum", ramp.cumsum(0), persistent=False)

    def _segments(self, f0_hz: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample F0 and gain, the phase (cycles) advanced within each segment between frame centres, and
        each segment's total advance. f0_hz [B, T] -> f, gain, within [B, T + 2 * margin - 1, hop], totals
        [B, T + 2 * margin - 1] float64."""
        f0 = fill_unvoiced(f0_hz).clamp(F0_SOURCE_MIN_HZ, self.sample_rate / 4)
        tracks = torch.stack([f0, (f0_hz > 0).to(f0.dtype)], dim=1)
        # Per-sample values linear between frame centres, flat beyond the ends, built segment by segment:
        # segment s runs from padded frame s's centre to the next, starting at sample (s - margin) * hop + hop // 2
        padded = F.pad(tracks, (self.margin, self.margin), mode="replicate")
        lo, hi = padded[..., :-1, None], padded[..., 1:, None]  # [B, 2, S, 1]
        f, gain = torch.lerp(lo, hi, self.ramp).unbind(1)  # [B, S, hop] each
        # The phase integral: within a segment in closed form (float32, at most a few cycles), across
        # segments in float64, since a float32 running sum over minutes of samples drifts off the F0
        f_lo, f_hi = lo[:, 0], hi[:, 0]
        steps = torch.arange(1, self.hop + 1, device=f.device, dtype=f.dtype)
        within = (f_lo * steps + (f_hi - f_lo) * self.ramp_sum) / self.sample_rate  # [B, S, hop]
        return f, gain, within, within[..., -1].double()

    def cycles_at(self, f0_hz: Tensor, sample: int) -> Tensor:
        """The source's phase in cycles (float64 [B]) just after `sample` (0 = the first sample of frame 0's
        hop, in [0, T * hop)), counted from the start of `signal`'s span: what a stream needs to continue a
        previous window's phase (`offset`)."""
        _, _, within, totals = self._segments(f0_hz.float())
        flat = self.margin * self.hop - self.hop // 2 + sample
        seg, k = divmod(flat, self.hop)
        return totals[:, :seg].sum(-1) + within[:, seg, k].double()

    def signal(self, f0_hz: Tensor, offset: Tensor | None = None) -> Tensor:
        """f0_hz [B, T] -> source [B, (T - 1) * hop + n_fft], starting (n_fft - hop) // 2 samples before
        frame 0's hop: the span that T analysis frames of the log_mel grid cover. offset [B] (cycles) shifts
        the phase, so consecutive windows of a stream join in phase."""
        frames = f0_hz.shape[-1]
        f, gain, within, totals = self._segments(f0_hz)
        starts = totals.cumsum(-1) - totals
        if offset is not None:
            starts = starts + offset.double().unsqueeze(-1)
        cycles = (starts - starts.round()).float()[..., None] + within
        phase = 2 * math.pi * (cycles - cycles.round())  # in [-pi, pi]
        begin = self.margin * self.hop - self.hop // 2 - self.left
        keep = slice(begin, begin + (frames - 1) * self.hop + self.n_fft)
        f, gain, phase = (x.flatten(1)[:, keep] for x in (f, gain, phase))
        harmonics = self.sample_rate / 2 / f  # how many fit below Nyquist, fractional
        full = harmonics.floor() - 1  # harmonics 1..full at full weight, harmonic full + 1 at `top`
        top = harmonics - harmonics.floor()
        half_sin = torch.sin(0.5 * phase)
        small = half_sin.abs() < 1e-4
        dirichlet = torch.where(small, full + 0.5,
                                torch.sin((full + 0.5) * phase) / (2 * torch.where(small, 1.0, half_sin))) - 0.5
        return HARMONIC_AMPLITUDE * gain * (dirichlet + top * torch.cos((full + 1) * phase))

    def forward(self, f0_hz: Tensor, offset: Tensor | None = None) -> Tensor:
        """f0_hz [B, T] (Hz, 0 = unvoiced), offset [B] cycles or None -> complex STFT [B, T, n_fft // 2 + 1]
        (time before frequency)."""
        frames = self.signal(f0_hz.float(), offset).unfold(-1, self.n_fft, self.hop)  # [B, T, n_fft], a view
        return torch.fft.rfft(frames * self.window, dim=-1)


class Vocoder(nn.Module):
    """Log-mel and F0 -> waveform. See the module docstring for the design."""

    def __init__(self, cfg: VocoderModelConfig, audio: AudioConfig) -> None:
        super().__init__()
        self.n_mels, self.hop = audio.n_mels, audio.hop_length
        bins = audio.n_fft // 2 + 1
        self.embed = nn.Conv1d(audio.n_mels + 2, cfg.dim, kernel_size=7, padding=3)
        self.norm = ChannelLayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, kernel_size=7,
                                                  layer_scale=1.0 / cfg.layers) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.apply(_init_backbone)
        self.free = nn.Linear(cfg.dim, 2 * bins)  # log-magnitude and phase, as Vocos's head
        self.filter = nn.Linear(cfg.dim, 2 * bins)  # (real, imaginary) of the source filter, bin by bin
        nn.init.zeros_(self.filter.weight)
        nn.init.zeros_(self.filter.bias)
        self.source = HarmonicSource(audio)
        self.istft = ISTFT(audio.n_fft, audio.hop_length, audio.win_length)

    def forward(self, mel: Tensor, f0_hz: Tensor, source_offset: Tensor | None = None) -> Tensor:
        """mel [B, n_mels, T] (audio.log_mel), f0_hz [B, T] (Hz, 0 = unvoiced) -> audio [B, T * hop] float32.
        source_offset [B]: the harmonic source's starting phase in cycles (a stream's windows join in phase).

        Samples are clamped to [-1, 1] with a straight-through gradient: the contract of a waveform,
        without silencing the gradient of a generator that is still too loud.
        """
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be [B, {self.n_mels}, T], got {tuple(mel.shape)}")
        if f0_hz.shape != (mel.shape[0], mel.shape[2]):
            raise ValueError(f"f0_hz must be [B, T] = {(mel.shape[0], mel.shape[2])}, got {tuple(f0_hz.shape)}")
        if mel.shape[2] == 0:
            return mel.new_zeros(mel.shape[0], 0, dtype=torch.float32)
        x = self.embed(torch.cat([mel, pitch_features(f0_hz).to(mel.dtype)], dim=1))
        x = self.norm(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x.transpose(1, 2))  # [B, T, dim]
        # heads and spectral arithmetic in float32 even under bf16 autocast: a bf16 phase is off by up to
        # 0.03 rad, a noise floor only about 30 dB down
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            log_mag, phase = self.free(x).chunk(2, dim=-1)  # [B, T, bins] each
            free = torch.polar(log_mag.exp().clamp(max=MAX_MAGNITUDE), phase)
            filt = torch.view_as_complex(self.filter(x).unflatten(-1, (-1, 2)))  # (real, imag) pairs
            audio = self.istft(free + filt * self.source(f0_hz, source_offset))
        return audio + (audio.clamp(-1.0, 1.0) - audio).detach()


def _init_backbone(module: nn.Module) -> None:
    # Vocos's initialization of the backbone; the heads keep PyTorch's defaults
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
