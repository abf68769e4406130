"""Streaming conversion: the source converted block by block, as it arrives, by the offline models.

The models are not causal: every ConvNeXt block looks `kernel_size // 2` frames both ways, and the content
encoder normalizes over the whole utterance. A stream therefore

- re-runs the networks on a window around each block: the block, `lookahead` frames after it, and on the left
  the receptive field (acoustic: `acoustic_context`, vocoder: `vocoder_context` + the iSTFT overlap), so the
  left side is exact and only the right side is cut short, as at the edge of a training segment;
- keeps, as state, the audio still inside a window, the converted mel and F0 of frames already emitted (the
  vocoder's left context, so what it re-renders is what it rendered), running statistics in place of the
  instance norms and the energy mean (each frame counted once; an exponential average after `memory_seconds`),
  the running median of the source F0 (for the register shift), and the harmonic source's phase, so the
  windows join in phase; the first `fade` samples of each block are crossfaded from the previous window's
  rendering of them;
- tracks F0 with the project's tracker (audio.f0) on a sliding window that ends with the lookahead: frames
  of the block are decided with the lookahead after them, then kept.

Latency: an input sample waits at most `block` for its block to fill, then `lookahead` for the context after
the block, so the algorithmic latency is block + lookahead. Everything the models need after the block lies
inside the lookahead: the mel frames' and iSTFT windows' overhang ((n_fft - hop) / 2 samples), half the F0
tracker's analysis window (1.5 periods of f0_min, 30 ms at 50 Hz) and the networks' right context.

The agreement with offline conversion is measured by `compare` (mel L1 and speaker similarity by the model's
own encoder); tests/test_stream.py holds the bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from voiceclone import audio as A
from voiceclone.audio.pitch import PERIODS_PER_WINDOW
from voiceclone.config import AcousticModelConfig, VocoderModelConfig
from voiceclone.errors import UserError, stderr_console
from voiceclone.inference import BLOCK_MS, LOOKAHEAD_MS, timbre
from voiceclone.inference.bundle import Model
from voiceclone.inference.synthesize import (Reference, check_long_enough, check_out, check_sample_rate,
                                             check_transpose, load_voice, write_wav)
from voiceclone.models.acoustic import INSTANCE_NORM_EPS, ContentEncoder
from voiceclone.models.modules import pitch_features
from voiceclone.threads import torch_threads

MEMORY_SECONDS = 30.0  # statistics become an exponential average over about this long
F0_CONTEXT_SECONDS = 0.25  # audio before the block that the F0 tracker's path finder sees
HIST_BINS_PER_OCTAVE = 120  # running median of the source F0: 10-cent bins


def acoustic_context(cfg: AcousticModelConfig) -> int:
    """Frames on each side that one output frame of the acoustic model depends on: the content encoder's and
    the decoder's ConvNeXt blocks in series, and the decoder's 3-tap pitch convolution."""
    half = cfg.kernel_size // 2
    return cfg.encoder_layers * half + 1 + cfg.decoder_layers * half


def vocoder_context(cfg: VocoderModelConfig) -> int:
    """Frames on each side of the vocoder's backbone: the 7-tap embedding and one 7-tap block per layer."""
    return 3 + 3 * cfg.layers


def content_code(encoder: ContentEncoder, normalized_mel: Tensor) -> Tensor:
    """The content encoder without its two instance norms: normalized mel [B, n_mels, T] -> code before the
    bottleneck's norm [B, C, T]. A stream (and an ONNX runtime) normalizes with its own statistics."""
    x = encoder.inp(normalized_mel)
    for block in encoder.blocks:
        x = block(x)
    return encoder.out(x)


class RunningStats:
    """Per-channel mean and variance of frames added one at a time, cumulative until `memory` frames, then an
    exponential average over about that many."""

    def __init__(self, channels: int, memory: int) -> None:
        self.memory = memory
        self.count = 0.0
        self.sum = np.zeros(channels)
        self.sq = np.zeros(channels)

    def add(self, x: np.ndarray) -> None:
        """x [channels, n]."""
        for chunk in np.array_split(x, max(1, -(-x.shape[1] // max(self.memory, 1))), axis=1):
            self.count += chunk.shape[1]
            self.sum += chunk.sum(1)
            self.sq += np.square(chunk, dtype=np.float64).sum(1)
            if self.count > self.memory:
                k = self.memory / self.count
                self.count, self.sum, self.sq = self.memory, self.sum * k, self.sq * k

    def moments(self, extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, variance) [channels], with the frames `extra` [channels, n] counted as if added."""
        count, s, sq = self.count, self.sum, self.sq
        if extra is not None and extra.shape[1]:
            count, s, sq = count + extra.shape[1], s + extra.sum(1), sq + np.square(extra, dtype=np.float64).sum(1)
        if count == 0:
            return np.zeros_like(s), np.ones_like(s)
        mean = s / count
        return mean, np.maximum(sq / count - mean**2, 0.0)


@dataclass
class StreamReport:
    block_ms: float
    lookahead_ms: float
    latency_ms: float
    block_seconds: list[float] = field(default_factory=list)  # compute time of each block (wall clock)
    # CPU time of each block: on a shared machine, the compute a block needs without waiting for a core
    block_cpu_seconds: list[float] = field(default_factory=list)


class StreamConverter:
    """Feed input samples with `push` (any amount at a time), get converted samples back, delayed by
    `latency` samples; `flush` at the end returns the rest, so the output is exactly as long as the input.

    model: a loaded Model with a vocoder; ref: the target voice (synthesize.embed_references).
    source_f0_median: the source's register (Hz), when known; otherwise the running median of its F0 so far,
    which settles within the first seconds of speech (offline conversion uses the whole file's).
    """

    def __init__(self, model: Model, ref: Reference, block_ms: float = BLOCK_MS, lookahead_ms: float = LOOKAHEAD_MS,
                 transpose: float = 0.0, keep_pitch: bool = False, source_f0_median: float | None = None,
                 memory_seconds: float = MEMORY_SECONDS, fade_ms: float | None = None,
                 strength: float = timbre.DEFAULT_STRENGTH) -> None:
        if model.vocoder is None:
            raise ValueError("streaming needs a model with a vocoder")
        self.model, self.ref = model, ref
        cfg = self.cfg = model.recipe.audio
        self.hop = hop = cfg.hop_length
        frame_ms = 1000 * hop / cfg.sample_rate
        self.block = max(1, round(block_ms / frame_ms))  # frames
        self.lookahead = max(0, round(lookahead_ms / frame_ms))  # frames
        self.ac_ctx = acoustic_context(model.recipe.acoustic.model)
        istft = -(-(cfg.n_fft - hop) // (2 * hop))  # frames whose iSTFT windows overlap a frame's hop
        self.voc_ctx = vocoder_context(model.recipe.vocoder.model) + istft
        self.f0_ctx = round(F0_CONTEXT_SECONDS * cfg.frame_rate)
        self.fade = int(hop if fade_ms is None else fade_ms * cfg.sample_rate / 1000)
        self.fade = min(self.fade, self.lookahead * hop)
        self.keep_pitch, self.pitch_factor = keep_pitch, A.semitones_to_ratio(transpose)
        self.source_f0_median = source_f0_median
        self.device = model.device
        memory = max(1, int(memory_seconds * cfg.frame_rate))
        self.mel_stats = RunningStats(cfg.n_mels + 1, memory)  # the mel and, last, the energy
        self.code_stats = RunningStats(model.recipe.acoustic.model.content_dim, memory)
        # timbre matching: the running envelope of the converted mel's voiced frames, as offline uses the whole's
        self.strength = strength if ref.envelope is not None else 0.0
        self.out_stats = RunningStats(cfg.n_mels, memory)
        self.hist = np.zeros(int(HIST_BINS_PER_OCTAVE * math.log2(cfg.f0_max / cfg.f0_min)) + 1)
        self.speaker = ref.vector.to(self.device)
        # audio: all input from sample `audio_start` on; frames before `done` are emitted
        self.audio, self.audio_start, self.received = np.zeros(0, np.float32), 0, 0
        self.done, self.stats_upto, self.ended = 0, 0, False
        self.mel_cache = np.zeros((cfg.n_mels, 0), np.float32)  # converted mel of emitted frames ...
        self.f0_cache = np.zeros(0, np.float32)  # ... their source F0 ...
        self.f0s_cache = np.zeros(0, np.float32)  # ... and the shifted F0 they were rendered with
        self.cache_start = 0  # absolute frame of the caches' column 0
        self.phase = 0.0  # the harmonic source's phase (cycles) at the start of frame `done`
        self.tail = np.zeros(0, np.float32)  # the last window's rendering of the next block's first samples
        self.report = StreamReport(1000 * self.block * hop / cfg.sample_rate,
                                   1000 * self.lookahead * hop / cfg.sample_rate,
                                   1000 * (self.block + self.lookahead) * hop / cfg.sample_rate)

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: block + lookahead."""
        return (self.block + self.lookahead) * self.hop

    @property
    def block_samples(self) -> int:
        return self.block * self.hop

    def push(self, x: np.ndarray) -> np.ndarray:
        """Append input samples [n] float32 at the model's rate; return the output blocks now complete."""
        if self.ended:
            raise RuntimeError("push after flush")
        self.audio = np.concatenate([self.audio, np.asarray(x, np.float32).reshape(-1)])
        self.received += len(x)
        out = []
        while self.received >= (self.done + self.block + self.lookahead) * self.hop:
            out.append(self._step())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """End of input: convert what is left with no more lookahead than there is."""
        self.ended = True
        out = []
        while self.done * self.hop < self.received:
            out.append(self._step())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # -------------------------------------------------------------------------------------------------

    def _samples(self, a: int, b: int) -> np.ndarray:
        return self.audio[a - self.audio_start : b - self.audio_start]

    def _step(self) -> np.ndarray:
        started, cpu_started = time.perf_counter(), time.process_time()
        hop, cfg = self.hop, self.cfg
        b0 = self.done
        avail = min(self.received, (b0 + self.block + self.lookahead) * hop)
        n_end = avail // hop  # frames computed in this window (the last ones partly reflect-padded)
        b1 = min(b0 + self.block, max(n_end, b0 + 1))
        last_sample = min(b1 * hop, self.received) if self.ended else b1 * hop

        # features of the acoustic window [m0, n_end): two extra frames on the left absorb the reflect padding
        a0 = max(0, b0 - self.ac_ctx)
        m0 = max(0, a0 - 2)
        mel, energy = self._mel(m0, avail)
        n_end = m0 + mel.shape[1]
        if n_end <= b0:  # the input ends within this frame: silence, as offline pads the last partial hop
            self.done, self.tail = b1, np.zeros(0, np.float32)
            self.report.block_seconds.append(time.perf_counter() - started)
            self.report.block_cpu_seconds.append(time.process_time() - cpu_started)
            return np.zeros(last_sample - b0 * hop, np.float32)
        f0 = self._f0(b0, avail, n_end)  # source F0 of [b0, n_end)
        final = n_end if self.ended else min(n_end, (avail - (cfg.n_fft - hop) // 2 - hop) // hop + 1)
        if final > self.stats_upto:
            feats = np.concatenate([mel, energy[None]], 0)[:, self.stats_upto - m0 : final - m0]
            self.mel_stats.add(feats)
            self.stats_upto = final
        self._add_pitch(f0[: b1 - b0])
        ratio = self._ratio()
        f0_all = np.concatenate([self.f0_cache[a0 - self.cache_start : b0 - self.cache_start], f0]) if b0 > a0 \
            else f0  # source F0 of [a0, n_end)
        out_mel = self._acoustic(mel[:, a0 - m0 :], energy[a0 - m0 :], f0_all * ratio, b0 - a0, b1 - b0)
        if self.strength:
            out_mel = self._match_timbre(out_mel, f0[: b1 - b0])

        # the vocoder's window [v0, n_end): the emitted frames' converted mel and F0 on the left
        v0 = max(0, b0 - self.voc_ctx)
        c = self.cache_start
        voc_mel = np.concatenate([self.mel_cache[:, v0 - c : b0 - c], out_mel], 1)
        voc_f0 = np.concatenate([self.f0s_cache[v0 - c : b0 - c], f0 * ratio]).astype(np.float32)
        wav = self._vocode(voc_mel, voc_f0, (b0 - v0) * hop, b1 * hop - v0 * hop) if voc_mel.shape[1] else \
            np.zeros(0, np.float32)
        wav = np.pad(wav, (0, max(0, (b1 + self.lookahead) * hop - v0 * hop - len(wav))))
        lo = (b0 - v0) * hop
        piece = wav[lo : lo + (last_sample - b0 * hop)].copy()
        if len(self.tail):
            n = min(len(self.tail), len(piece))
            w = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
            piece[:n] = self.tail[:n] * (1 - w) + piece[:n] * w
        self.tail = wav[lo + (b1 - b0) * hop : lo + (b1 - b0) * hop + self.fade].copy()

        # commit the block and drop what no later window needs
        self.mel_cache = np.concatenate([self.mel_cache[:, : b0 - c], out_mel[:, : b1 - b0]], 1)
        self.f0_cache = np.concatenate([self.f0_cache[: b0 - c], f0[: b1 - b0]])
        self.f0s_cache = np.concatenate([self.f0s_cache[: b0 - c], (f0[: b1 - b0] * ratio).astype(np.float32)])
        self.done = b1
        keep_from = max(0, b1 - max(self.voc_ctx, self.ac_ctx, self.f0_ctx) - 2)
        if keep_from > self.cache_start:
            d = keep_from - self.cache_start
            self.mel_cache, self.f0_cache, self.f0s_cache = self.mel_cache[:, d:], self.f0_cache[d:], self.f0s_cache[d:]
            self.cache_start = keep_from
        drop = keep_from * hop - self.audio_start
        if drop > 0:
            self.audio, self.audio_start = self.audio[drop:], keep_from * hop
        self.report.block_seconds.append(time.perf_counter() - started)
        self.report.block_cpu_seconds.append(time.process_time() - cpu_started)
        return np.clip(piece, -1.0, 1.0)

    def _mel(self, m0: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel [n_mels, n] and energy [n] of the frames from m0 on, over the audio up to sample `end`."""
        with torch.inference_mode():
            mel, energy = A.log_mel(torch.from_numpy(self._samples(m0 * self.hop, end).copy()), self.cfg,
                                    return_energy=True)
        return mel.numpy(), energy.numpy()

    def _f0(self, b0: int, end: int, n_end: int) -> np.ndarray:
        """Source F0 [n_end - b0] of the frames from b0 on: the tracker over a sliding window that starts
        F0_CONTEXT_SECONDS before the block and ends with the audio."""
        f0_start = max(0, b0 - self.f0_ctx)
        track = A.f0(np.ascontiguousarray(self._samples(f0_start * self.hop, end)), self.cfg)
        out = track[b0 - f0_start : n_end - f0_start]
        return np.pad(out, (0, n_end - b0 - len(out))).astype(np.float32)

    def _add_pitch(self, f0: np.ndarray) -> None:
        voiced = f0[f0 > 0]
        if voiced.size:
            bins = np.clip((HIST_BINS_PER_OCTAVE * np.log2(voiced / self.cfg.f0_min)).astype(int), 0, len(self.hist) - 1)
            np.add.at(self.hist, bins, 1.0)

    def source_median(self) -> float | None:
        """The running median of the source's voiced F0 (Hz), None before the first voiced frame."""
        total = self.hist.sum()
        if total == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.hist), total / 2))
        return float(self.cfg.f0_min * 2 ** ((k + 0.5) / HIST_BINS_PER_OCTAVE))

    def _ratio(self) -> float:
        """The F0 multiplier: as synthesize's, with the source's register measured so far."""
        ratio = self.pitch_factor
        median = self.source_f0_median or self.source_median()
        if not self.keep_pitch and median and self.ref.f0_median:
            ratio *= self.ref.f0_median / median
        return ratio

    def _acoustic(self, mel: np.ndarray, energy: np.ndarray, f0: np.ndarray, first: int, count: int) -> np.ndarray:
        """Converted mel [n_mels, n - first] of the window's frames from `first` on. mel [n_mels, n], energy [n],
        f0 [n] (shifted); the statistics of the frames from `first` on, not yet counted, are counted here."""
        moments_mean, moments_var = self.mel_stats.moments()
        mean, var = moments_mean.astype(np.float32), moments_var.astype(np.float32)
        x = torch.from_numpy((mel - mean[:-1, None]) / np.sqrt(var[:-1, None] + INSTANCE_NORM_EPS)).to(self.device)
        e = torch.from_numpy(energy - mean[-1]).to(self.device)
        with torch.inference_mode():
            model = self.model.acoustic
            code = content_code(model.content_encoder, x.unsqueeze(0))[0].cpu().numpy()
            c_mean, c_var = self.code_stats.moments(code[:, first:])
            content = (code - c_mean[:, None]) / np.sqrt(c_var[:, None] + INSTANCE_NORM_EPS)
            out = model.decoder(torch.from_numpy(content.astype(np.float32)).unsqueeze(0).to(self.device),
                                pitch_features(torch.from_numpy(f0.astype(np.float32)).unsqueeze(0).to(self.device)),
                                e.view(1, 1, -1), self.speaker.unsqueeze(0))[0]
        self.code_stats.add(code[:, first : first + count])
        return out[:, first:].float().cpu().numpy()

    def _match_timbre(self, out_mel: np.ndarray, f0: np.ndarray) -> np.ndarray:
        """out_mel [n_mels, n] (the block's frames first) shifted onto the reference's envelope, the output's own
        measured over the voiced frames so far, this block's counted once (timbre.py)."""
        voiced = out_mel[:, : len(f0)][:, f0 > 0]
        self.out_stats.add(voiced)
        if self.out_stats.count < timbre.MIN_VOICED_FRAMES:
            return out_mel
        d = timbre.shift(timbre.level_removed(self.out_stats.moments()[0]), self.ref.envelope, self.strength)
        return out_mel if d is None else out_mel + d[:, None]

    def _vocode(self, mel: np.ndarray, f0: np.ndarray, block_start: int, next_start: int) -> np.ndarray:
        """Audio [n * hop] of the vocoder window, its source in phase with what was already emitted: the phase at
        `block_start` (samples into the window) is the one carried over; the one at `next_start` is kept."""
        with torch.inference_mode():
            f0_t = torch.from_numpy(f0).unsqueeze(0).to(self.device)
            source = self.model.vocoder.source
            offset = torch.tensor([self.phase], dtype=torch.float64, device=self.device)
            if block_start > 0:
                offset = offset - source.cycles_at(f0_t, block_start - 1)
            wav = self.model.render(torch.from_numpy(mel).unsqueeze(0).to(self.device), f0_t, offset)[0]
            if next_start <= f0.shape[0] * self.hop:
                self.phase = float((offset + source.cycles_at(f0_t, next_start - 1))[0])
        return wav.float().cpu().numpy()


def compare(model: Model, streamed: np.ndarray, offline: np.ndarray) -> dict[str, float]:
    """How far a streamed output is from the offline output of the same source and reference.

    mel_l1: mean |difference| of the two log-mels (natural log, so 0.1 is about 0.9 dB), over the frames
    both have; secs: cosine similarity of their speaker vectors by the model's own speaker encoder.
    """
    cfg = model.recipe.audio
    n = min(len(streamed), len(offline))
    device = model.device
    with torch.inference_mode():
        mels = [A.log_mel(torch.from_numpy(np.ascontiguousarray(y[:n], dtype=np.float32)).to(device), cfg)
                for y in (streamed, offline)]
        vectors = [model.acoustic.speaker_encoder(m.unsqueeze(0))[0] for m in mels]
        return {"mel_l1": float((mels[0] - mels[1]).abs().mean()),
                "secs": float(torch.cosine_similarity(vectors[0], vectors[1], dim=0))}


def stream_file(model: Model, ref: Reference, y: np.ndarray, chunk: int | None = None,
                **kwargs) -> tuple[np.ndarray, StreamReport]:
    """Run the stream over samples y [T] fed `chunk` samples at a time (default one block), as a live input
    would be: -> (output [T], report)."""
    conv = StreamConverter(model, ref, **kwargs)
    chunk = chunk or conv.block_samples
    out = [conv.push(y[i : i + chunk]) for i in range(0, len(y), chunk)]
    out.append(conv.flush())
    return np.concatenate(out), conv.report


def synthesize_stream(model_path, references, source, out, block_ms: float = BLOCK_MS,
                      lookahead_ms: float = LOOKAHEAD_MS, transpose: float = 0.0, keep_pitch: bool = False,
                      sample_rate: int | None = None, device: str | None = None, console=None,
                      strength: float = timbre.DEFAULT_STRENGTH) -> dict:
    """`voiceclone synthesize --stream`: convert one file block by block, as `voiceclone live` converts a
    microphone, and print the latency and the speed.

    The file goes through the offline front end first (trimmed, loudness-normalized), so the output lines up
    sample for sample with the offline conversion of the same file; the blocks are then fed one at a time.
    """
    console = console or stderr_console()
    check_stream_options(block_ms, lookahead_ms)
    timbre.check_strength(strength)
    check_transpose(transpose)
    source, out = Path(source), Path(out)
    if source.is_dir():
        raise UserError(f"{source}: --stream converts one file, not a folder")
    if not source.exists():
        A.check_file(source)  # missing, or a link that does not resolve: one line that says which
    check_sample_rate(sample_rate)
    check_out(out, source, references)
    model, ref = load_voice(model_path, references, device, console)
    cfg = model.recipe.audio
    y = A.clean(A.load_audio(source, cfg.sample_rate), model.recipe.prepare, source)
    check_long_enough(y, cfg, source)  # a 1-sample source was written as an empty output, exit 0
    started = time.perf_counter()
    # one thread: a stream's windows are too small for intra-op parallelism to pay (on a busy machine two
    # threads made blocks 10x slower), and the other cores stay free for the audio and the rest
    with torch_threads(1):
        wav, report = stream_file(model, ref, y, block_ms=block_ms, lookahead_ms=lookahead_ms, transpose=transpose,
                                  keep_pitch=keep_pitch, strength=strength)
    elapsed = time.perf_counter() - started
    rate = sample_rate or cfg.sample_rate
    if rate != cfg.sample_rate:
        wav = A.resample(wav, cfg.sample_rate, rate)
    write_wav(out, [wav], rate)
    result = {"source": str(source), "output": str(out), "seconds": len(y) / cfg.sample_rate, "elapsed": elapsed,
              "blocks": len(report.block_seconds), **describe(report, cfg)}
    print_report(console, result)
    return result


def check_stream_options(block_ms: float, lookahead_ms: float) -> None:
    if not 5.0 <= block_ms <= 2000.0:
        raise UserError(f"--block-ms {block_ms:g}: expected 5-2000 ms")
    if not 0.0 <= lookahead_ms <= 2000.0:
        raise UserError(f"--lookahead-ms {lookahead_ms:g}: expected 0-2000 ms")


def describe(report: StreamReport, cfg) -> dict:
    """The figures a stream reports, in ms: latency and its parts, compute per block, real-time factor."""
    times = np.array(report.block_seconds) * 1000 if report.block_seconds else np.zeros(1)
    return {"block_ms": report.block_ms, "lookahead_ms": report.lookahead_ms, "latency_ms": report.latency_ms,
            "analysis_overhang_ms": 1000 * (cfg.n_fft - cfg.hop_length) / 2 / cfg.sample_rate,
            "f0_window_half_ms": 1000 * PERIODS_PER_WINDOW / cfg.f0_min / 2,
            "compute_ms_median": float(np.median(times)), "compute_ms_p90": float(np.percentile(times, 90)),
            "compute_ms_max": float(times.max()), "real_time_factor": float(np.median(times)) / report.block_ms,
            "cpu_ms_median": 1000 * float(np.median(report.block_cpu_seconds)) if report.block_cpu_seconds else 0.0}


def latency_line(r: dict) -> str:
    return (f"algorithmic latency {r['latency_ms']:.0f} ms = block {r['block_ms']:.0f} ms + lookahead "
            f"{r['lookahead_ms']:.0f} ms (the lookahead holds the STFT/iSTFT overhang {r['analysis_overhang_ms']:.0f} ms, "
            f"half the F0 window {r['f0_window_half_ms']:.0f} ms and the networks' right context; the vocoder adds none)")


def print_report(console, r: dict) -> None:
    console.print(latency_line(r), highlight=False)
    console.print(f"compute per block {r['compute_ms_median']:.1f} ms median (p90 {r['compute_ms_p90']:.1f}, max "
                  f"{r['compute_ms_max']:.1f}) over {r.get('blocks', 0)} blocks; real-time factor "
                  f"{r['real_time_factor']:.2f} (compute / block duration, < 1 keeps up); CPU time per block "
                  f"{r['cpu_ms_median']:.1f} ms median", highlight=False)
    if "output" in r:
        console.print(f"wrote {r['output']} ({r['seconds']:.2f} s)", highlight=False)
