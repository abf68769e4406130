"""Configuration: frozen dataclasses, loaded from TOML recipes, overridden with `--set key=value`.

A recipe is a TOML file whose sections mirror `Recipe` below (`[audio]`, `[prepare]`, `[acoustic.model]`,
`[acoustic.train]`, `[acoustic.loss]`, ...). Every key is checked: an unknown key or a value of the wrong
type is a `UserError` naming the key and the file. A model section may name a `size` preset (`tiny`,
`base`); keys given beside it override the preset's values. The resolved recipe is saved as JSON beside
every dataset and checkpoint and read back with `recipe_from_dict`, so a run never depends on the TOML
file that started it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from voiceclone.errors import UserError
from voiceclone.melscale import empty_bands

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # shipped with the package (package data)


@dataclass(frozen=True)
class AudioConfig:
    """The one audio front end: every mel, F0 and energy frame in the project comes from these values."""

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    f0_min: float = 50.0  # Hz; 50-1100 covers bass speech to soprano singing
    f0_max: float = 1100.0

    def __post_init__(self) -> None:
        _require(8000 <= self.sample_rate <= 192000, "audio.sample_rate", "must be in [8000, 192000]")
        _require(16 <= self.n_fft <= 16384, "audio.n_fft", "must be in [16, 16384]")
        _require(1 <= self.n_mels <= 512, "audio.n_mels", "must be in [1, 512]")
        _require(self.win_length <= self.n_fft, "audio.win_length", "must not exceed audio.n_fft")
        _require(0 < self.hop_length <= self.win_length, "audio.hop_length", "must be in (0, win_length]")
        _require(self.fmax <= self.sample_rate / 2, "audio.fmax", "must not exceed sample_rate / 2")
        _require(0 <= self.fmin < self.fmax, "audio.fmin", "must be in [0, fmax)")
        # the tracker's window holds a few periods of the lowest pitch: at 0.001 Hz that was 8 GiB a frame; 20 Hz
        # is below any voice, vocal fry included
        _require(20 <= self.f0_min < self.f0_max, "audio.f0_min", "must be in [20, f0_max) Hz")
        _require(self.f0_max <= self.sample_rate / 2, "audio.f0_max", "must not exceed sample_rate / 2")
        # a mel band narrower than the FFT's bin spacing may hold no bin: that feature is the log floor for every
        # sound (fmin = 7999, fmax = 8000 gave a dataset of nothing but the floor, prepared without a word)
        empty = empty_bands(self)
        _require(empty == 0, "audio.n_mels",
                 f"= {self.n_mels} leaves {empty} mel bands between fmin {self.fmin:g} and fmax {self.fmax:g} Hz "
                 f"without an FFT bin ({self.sample_rate / self.n_fft:g} Hz apart at n_fft {self.n_fft}): lower "
                 f"audio.n_mels, raise audio.n_fft or widen fmin-fmax")

    @property
    def frame_rate(self) -> float:
        """Frames per second of every feature track."""
        return self.sample_rate / self.hop_length


@dataclass(frozen=True)
class PrepareConfig:
    max_seconds: float = 15.0  # longer files are split at their quietest points
    min_seconds: float = 0.5  # shorter pieces are dropped
    trim_top_db: float = 40.0  # silence threshold below the peak, for trimming the ends
    loudness_db: float = -23.0  # target RMS level (dBFS) of the voiced part of each utterance
    val_per_speaker: int = 2  # utterances of each seen speaker held out for validation
    unseen_fraction: float = 0.1  # share of speakers held out entirely (at least one when >= 3)
    unseen_speakers: tuple[str, ...] = ()  # named unseen speakers; overrides the fraction
    split_salt: str = "voiceclone"  # part of the stable split hash; change it to draw other splits

    def __post_init__(self) -> None:
        _require(self.min_seconds > 0, "prepare.min_seconds", "must be positive")
        _require(self.max_seconds > 2 * self.min_seconds, "prepare.max_seconds", "must exceed 2 * min_seconds")
        # in samples it must be a number: 1e308 s times the rate is inf, and every file 'failed' with an
        # OverflowError; a day is longer than any recording prepare reads whole
        _require(self.max_seconds <= 86400, "prepare.max_seconds", "must be at most 86400 (a day)")
        # an RMS level above 0 dBFS needs a peak above full scale: the peak limit silently wins (23 for -23 made
        # a peak-normalized dataset), and 10 ** (huge / 20) overflows (every file 'failed')
        _require(-70 <= self.loudness_db <= 0, "prepare.loudness_db", "must be in [-70, 0] dBFS")
        _require(self.trim_top_db > 0, "prepare.trim_top_db", "must be positive (dB below the peak)")  # else all trimmed
        _require(0 <= self.unseen_fraction < 1, "prepare.unseen_fraction", "must be in [0, 1)")
        _require(self.val_per_speaker >= 0, "prepare.val_per_speaker", "must be >= 0")


@dataclass(frozen=True)
class AcousticModelConfig:
    """Sizes of the zero-shot conversion model (see models/acoustic.py)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(hidden=96, content_dim=16, speaker_dim=64, encoder_layers=3, decoder_layers=4,
                     speaker_layers=2, kernel_size=5),
        # 4 + 6 blocks, not 6 + 8: with the base vocoder, synthesis then runs ~60x real time end to end on
        # 2 CPU cores (benchmarks/synthesize_speed.py), above the 50x target; 6 + 8 gave ~40x
        "base": dict(hidden=256, content_dim=32, speaker_dim=192, encoder_layers=4, decoder_layers=6,
                     speaker_layers=4, kernel_size=5),
    }
    size: str = "tiny"
    hidden: int = 96
    content_dim: int = 16  # the bottleneck that keeps the speaker out of the content code
    speaker_dim: int = 64
    encoder_layers: int = 3
    decoder_layers: int = 4
    speaker_layers: int = 2
    kernel_size: int = 5
    # the auxiliary speaker objective: "softmax" (plain cross-entropy) or "aam" (additive angular margin,
    # as speaker verifiers are trained: classes pushed apart on the sphere, so unseen voices spread out too)
    speaker_loss: str = "softmax"
    aam_margin: float = 0.2
    aam_scale: float = 30.0

    def __post_init__(self) -> None:
        _require(self.speaker_loss in ("softmax", "aam"), "acoustic.model.speaker_loss", "must be 'softmax' or 'aam'")
        # a negative margin pulls classes together; a scale of 1e308 made every logit inf and the loss NaN,
        # reported as a learning rate too high (speaker verifiers train with margins 0.1-0.5, scales 30-64)
        _require(0 <= self.aam_margin < 1, "acoustic.model.aam_margin", "must be in [0, 1) (a cosine margin)")
        _require(0 < self.aam_scale <= 100, "acoustic.model.aam_scale", "must be in (0, 100]")
        # far above any sensible model, far below what would exhaust a machine's memory: a typo or a
        # hostile bundle is refused before anything is allocated
        for key, top in (("hidden", 4096), ("content_dim", 1024), ("speaker_dim", 2048), ("encoder_layers", 64),
                         ("decoder_layers", 64), ("speaker_layers", 64), ("kernel_size", 63)):
            _require(1 <= getattr(self, key) <= top, f"acoustic.model.{key}", f"must be in [1, {top}]")
        _require(self.kernel_size % 2 == 1, "acoustic.model.kernel_size",
                 "must be odd (a convolution keeps the sequence's length only with an odd kernel)")


@dataclass(frozen=True)
class TrainConfig:
    """How one stage is trained. One epoch = one random segment from every training utterance."""

    epochs: int = 30
    batch_size: int = 16
    segment_frames: int = 128
    lr: float = 2e-3
    lr_min_ratio: float = 0.05  # cosine decay ends at lr * lr_min_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.01
    beta1: float = 0.8
    beta2: float = 0.99
    grad_clip: float = 1.0
    num_workers: int = 0  # data-loader worker processes
    seed: int = 1234
    max_bad_steps: int = 5  # consecutive non-finite losses before reloading the last good state
    lr_backoff: float = 0.5  # learning-rate factor applied on such a reload
    bf16: bool = True  # autocast on CUDA only
    ema: float = 0.0  # weight average for validation and best.pt: its decay per step (0 = off; train/ema.py)
    # validation segments per utterance: fixed, evenly spaced, covering utterances up to this many segments
    # long, so the monitored loss measures whole utterances rather than one slice of each
    val_segments: int = 6
    # at most this many validation segments per split, evenly spread over its utterances (0: all of them):
    # on a CPU the vocoder's validation (audio generated, its F0 tracked) can cost more than its training epoch
    val_max_segments: int = 0

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(1 <= self.val_segments <= 64, "train.val_segments", "must be in [1, 64]")
        _require(0 <= self.val_max_segments <= 10**7, "train.val_max_segments", "must be in [0, 10^7] (0: all)")
        _require(0.0 <= self.ema < 1.0, "train.ema", "must be in [0, 1): the average's decay per step")
        _require(1 <= self.batch_size <= 4096, "train.batch_size", "must be in [1, 4096]")
        _require(8 <= self.segment_frames <= 8192, "train.segment_frames", "must be in [8, 8192]")
        _require(self.lr > 0, "train.lr", "must be positive")
        # the rest would pass here and fail later, with a traceback from torch, numpy or the data loader
        _require(0 <= self.seed < 2**32, "train.seed", "must be in [0, 2^32)")
        _require(0 <= self.num_workers <= 256, "train.num_workers", "must be in [0, 256]")
        _require(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "train.beta1/beta2", "must be in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(self.grad_clip > 0, "train.grad_clip", "must be positive")
        _require(0.0 <= self.lr_min_ratio <= 1.0, "train.lr_min_ratio", "must be in [0, 1]")
        _require(self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        _require(0.0 < self.lr_backoff <= 1.0, "train.lr_backoff", "must be in (0, 1]")


@dataclass(frozen=True)
class AcousticLossWeights:
    """Each named loss of the acoustic task times its same-named weight."""

    mel: float = 1.0  # L1 between predicted and target log-mel
    speaker: float = 0.05  # cross-entropy of the auxiliary speaker classifier
    # 1 - cosine between the model's own speaker embedding of a *converted* output (content of one item,
    # another item's reference) and that reference's embedding; the encoder is frozen on this path
    consistency: float = 0.0
    # L1 between the content the model's own content encoder (frozen on that path) reads back from that
    # converted output and the source's content: the words must survive the change of voice
    cycle: float = 0.0

    def __post_init__(self) -> None:
        _nonnegative(self, "acoustic.loss")


@dataclass(frozen=True)
class PerturbConfig:
    """Training-time perturbations of the acoustic model (stages/augment.py); off with `augment = false`."""

    formant_semitones: float = 3.0  # content input: frequency warp within +- this
    eq_depth: float = 0.35  # content input: random EQ, each cosine term within +- this (nepers)
    eq_terms: int = 3  # content input: cosine terms of the EQ curve (more = narrower peaks and notches)
    gain: float = 0.7  # content input: random gain within +- this (nepers)
    virtual_share: float = 0.5  # share of items turned into a virtual speaker (target and reference warped)
    virtual_semitones: float = 4.0  # their warp within +- this

    def __post_init__(self) -> None:
        # the EQ's basis is [eq_terms, n_mels]: 10^9 terms was a 320 GB allocation and a traceback, and more
        # cosines than the 512 bands n_mels allows alias onto the lower ones
        _require(1 <= self.eq_terms <= 512, "acoustic.perturb.eq_terms", "must be in [1, 512]")
        _require(0 <= self.virtual_share <= 1, "acoustic.perturb.virtual_share", "must be in [0, 1]")
        # each is a range "within +- this": far past any voice, 2 ** (1e300 / 12) and 1e300 nepers were inf in the
        # log-mel and a NaN loss, reported as a learning rate too high; 48 semitones is --transpose's range
        for key, top, unit in (("formant_semitones", 48, "semitones"), ("virtual_semitones", 48, "semitones"),
                               ("eq_depth", 20, "nepers"), ("gain", 20, "nepers")):
            _require(0 <= getattr(self, key) <= top, f"acoustic.perturb.{key}", f"must be in [0, {top}] {unit}")


@dataclass(frozen=True)
class AcousticStage:
    model: AcousticModelConfig = field(default_factory=AcousticModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: AcousticLossWeights = field(default_factory=AcousticLossWeights)
    augment: bool = True  # content perturbation and virtual speakers; off only for ablations
    perturb: PerturbConfig = field(default_factory=PerturbConfig)


@dataclass(frozen=True)
class VocoderModelConfig:
    """Sizes of the Vocos-style generator and its discriminators (see models/vocoder.py)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=64, intermediate_dim=192, layers=3, mpd_periods=(2, 3, 5), mpd_channels=4,
                     mrd_channels=8),
        # Vocos's 512/1536/8 (14M with our source filter) synthesizes at about 60x real time on 2 CPU
        # cores; 384/1152/6 (6.4M) keeps the 100x target with a margin (110-125x; 7 layers 97-114x, 8
        # about 100x). Measured with benchmarks/vocoder_speed.py.
        "base": dict(dim=384, intermediate_dim=1152, layers=6, mpd_periods=(2, 3, 5, 7, 11), mpd_channels=32,
                     mrd_channels=32),
    }
    size: str = "tiny"
    dim: int = 64
    intermediate_dim: int = 192
    layers: int = 3
    mpd_periods: tuple[int, ...] = (2, 3, 5)
    mpd_channels: int = 4  # first layer's; HiFi-GAN's 32-128-512-1024-1024 at 32
    mrd_channels: int = 8
    mrd_resolutions: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256))

    def __post_init__(self) -> None:
        for key, top in (("dim", 4096), ("intermediate_dim", 16384), ("layers", 64), ("mpd_channels", 1024),
                         ("mrd_channels", 1024)):
            _require(1 <= getattr(self, key) <= top, f"vocoder.model.{key}", f"must be in [1, {top}]")
        _require(len(self.mpd_periods) <= 16 and all(1 <= p <= 64 for p in self.mpd_periods),
                 "vocoder.model.mpd_periods", "must be at most 16 periods in [1, 64]")
        _require(len(self.mrd_resolutions) <= 16 and all(1 <= x <= 16384 for r in self.mrd_resolutions for x in r),
                 "vocoder.model.mrd_resolutions", "must be at most 16 resolutions with sizes in [1, 16384]")
        _require(all(hop <= win <= n_fft for n_fft, hop, win in self.mrd_resolutions), "vocoder.model.mrd_resolutions",
                 "must be (n_fft, hop, window) triples with hop <= window <= n_fft")
        _require(len(self.mpd_periods) + len(self.mrd_resolutions) > 0, "vocoder.model",
                 "needs at least one discriminator (mpd_periods or mrd_resolutions)")


@dataclass(frozen=True)
class VocoderLossWeights:
    mel: float = 45.0  # L1 between mels of generated and real audio (HiFi-GAN's balance)
    feature: float = 2.0  # feature matching over discriminator layers
    adversarial: float = 1.0  # least-squares generator loss
    discriminator: float = 1.0  # least-squares discriminator loss

    def __post_init__(self) -> None:
        _nonnegative(self, "vocoder.loss")


@dataclass(frozen=True)
class GanConfig:
    mel_only_steps: int = 500  # generator warm-up on the mel loss before the discriminators join
    disc_lr: float = 2e-4

    def __post_init__(self) -> None:
        _require(self.mel_only_steps >= 0, "vocoder.gan.mel_only_steps", "must be >= 0")
        _require(self.disc_lr > 0, "vocoder.gan.disc_lr", "must be positive")


@dataclass(frozen=True)
class VocoderStage:
    model: VocoderModelConfig = field(default_factory=VocoderModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(segment_frames=32, lr=5e-4, beta1=0.8))
    loss: VocoderLossWeights = field(default_factory=VocoderLossWeights)
    gan: GanConfig = field(default_factory=GanConfig)


@dataclass(frozen=True)
class ConvergenceConfig:
    """The detector of docs/architecture.md section 8, used by early stopping and by `evaluate`."""

    window: int = 3  # epochs over which trends are measured
    patience: int = 5  # epochs without relative improvement above min_delta before `converged`
    min_delta: float = 0.005  # relative improvement that counts (0.005 = 0.5%)
    diverge_factor: float = 1.5  # validation this far above its best and rising = `diverged`
    early_stop: bool = True
    # reduce-on-plateau: a plateau first multiplies the learning rate by lr_drop_factor, up to max_lr_drops
    # times; early stopping fires only on a plateau at the lowest rate (0 drops = stop on the first plateau)
    lr_drop_factor: float = 0.5
    max_lr_drops: int = 2

    def __post_init__(self) -> None:
        _require(self.window >= 2, "convergence.window", "must be >= 2")
        _require(self.patience >= 1, "convergence.patience", "must be >= 1")
        # relative: a positive loss cannot fall by its whole value, so at 1 or more no epoch would ever count
        _require(0 <= self.min_delta < 1, "convergence.min_delta", "must be in [0, 1) (0.005 = 0.5%)")
        # "this far above its best": at 1 or below, any two epochs above the best that did not fall fast were
        # 'diverged', and early stopping ended a run on its first plateau, advising a lower learning rate
        _require(self.diverge_factor > 1, "convergence.diverge_factor", "must be > 1 (a multiple of the best value)")
        _require(0 < self.lr_drop_factor < 1, "convergence.lr_drop_factor", "must be in (0, 1)")
        _require(0 <= self.max_lr_drops <= 10, "convergence.max_lr_drops", "must be in [0, 10]")


@dataclass(frozen=True)
class FinetuneConfig:
    """Adapting a trained model to one voice: fewer epochs, smaller and layer-wise learning rates."""

    freeze: tuple[str, ...] = ("content_encoder",)  # parts kept frozen throughout
    unfreeze_every: int = 2  # epochs between unfreezing one more decoder block (0 = all trainable)
    frozen_blocks: int = 2  # decoder blocks frozen at the start, unfrozen from the first one upwards
    layer_lr_decay: float = 0.7  # each block's lr = the next block's * this; early layers learn slower
    lr: float = 3e-4
    epochs: int = 15
    learn_speaker: bool = True  # learn the new voice's speaker vector, initialized from its references

    def __post_init__(self) -> None:
        _require(self.unfreeze_every >= 0, "finetune.unfreeze_every", "must be >= 0 (0 = all blocks trainable)")
        _require(self.frozen_blocks >= 0, "finetune.frozen_blocks", "must be >= 0")
        # below 0 every other block would learn backwards, at 0 all but the last not at all; above 1 the early
        # layers would learn faster, not slower (1e300: an OverflowError traceback, 1e10: inf rates, no model)
        _require(0 < self.layer_lr_decay <= 1, "finetune.layer_lr_decay", "must be in (0, 1] (1 = one rate for all)")
        _require(self.lr > 0, "finetune.lr", "must be positive")
        _require(self.epochs >= 1, "finetune.epochs", "must be >= 1")


@dataclass(frozen=True)
class Recipe:
    name: str = "default"
    audio: AudioConfig = field(default_factory=AudioConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    acoustic: AcousticStage = field(default_factory=AcousticStage)
    vocoder: VocoderStage = field(default_factory=VocoderStage)
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def differences(a: Any, b: Any, prefix: str, sep: str = " vs ") -> list[str]:
    """Where two configs (dataclasses or dicts, nested) differ: ["audio.sample_rate: 16000 vs 22050", ...].
    The one comparison behind every "prepared with another audio config" message."""
    a = dataclasses.asdict(a) if dataclasses.is_dataclass(a) else a
    b = dataclasses.asdict(b) if dataclasses.is_dataclass(b) else b
    out = []
    for k in sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else []:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += differences(a[k], b[k], f"{prefix}.{k}", sep)
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}.{k}: {a.get(k)!r}{sep}{b.get(k)!r}")
    return out


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise UserError(f"setting {key} {why}")


def _nonnegative(weights: Any, section: str) -> None:
    """Loss weights: a negative one would train the model to make that loss worse."""
    for f in dataclasses.fields(weights):
        _require(getattr(weights, f.name) >= 0, f"{section}.{f.name}", "must be >= 0")


# ---------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with every key and type checked.


def build(cls: type, data: dict[str, Any], where: str = "", source: str = "config") -> Any:
    """Build dataclass `cls` from `data`, applying a `size` preset first if the class has presets."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{where or 'top level'}' must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = dict(data)
    presets = getattr(cls, "PRESETS", None)
    if presets and "size" in data:
        size = data["size"]
        if not isinstance(size, str) or size not in presets:  # a list or table: `in` would raise TypeError
            raise UserError(f"{source}: {where}.size = {size!r} is not one of {sorted(presets)}")
        data = {**presets[size], **data}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise UserError(f"{source}: unknown key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path, source)
    try:
        return cls(**kwargs)
    except UserError as e:  # a range check: name the file it came from
        message = str(e)
        if message.startswith(source):
            raise
        # TrainConfig's checks say train.KEY, for both stages: the message names the stage's own section
        part = f"setting {where.rpartition('.')[2]}."
        if where and message.startswith(part):
            message = f"setting {where}.{message[len(part):]}"
        raise UserError(f"{source}: {message}") from None


def _coerce(tp: Any, value: Any, path: str, source: str) -> Any:
    def bad() -> UserError:
        return UserError(f"{source}: '{path}' must be {_type_name(tp)}, got {value!r}")

    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, source)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, path, source) for v in value)
        if len(args) != len(value):
            raise bad()
        return tuple(_coerce(a, v, path, source) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        # TOML spells nan and inf: no setting means either, and they pass every range check written as a
        # comparison (a NaN loudness target silenced every file, reported as "no voiced speech")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, path, source)
            except UserError:
                continue
        raise bad()
    return value


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a table"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


# ---------------------------------------------------------------------------------------------------
# Recipes and overrides.


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe is a path to a TOML file, or the name of one in ./recipes/ or in the recipes shipped with
    voiceclone (voiceclone/recipes/)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix == ".toml":
        raise UserError(f"{p}: recipe file not found" if not p.exists() else f"{p}: is a folder, not a recipe file")
    # a name: a folder of that name in the working directory (runs/, a corpus) does not hide the recipe
    for folder in (Path.cwd() / "recipes", RECIPES_DIR):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted(q.stem for q in RECIPES_DIR.glob("*.toml"))
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a recipe file (recipes: a TOML file, or one of "
                        f"{', '.join(known) or 'none'})")
    raise UserError(f"recipe '{name_or_path}' not found (known: {', '.join(known) or 'none'})")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`acoustic.train.lr=1e-3` -> (['acoustic', 'train', 'lr'], 0.001). Values are TOML; bare words are strings."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    # deep copy of plain data; a TOML date or time in a recipe file (sample_rate = 2024-01-01) has no JSON form
    # and was a TypeError traceback: it becomes its text, which the type checks then judge
    data = json.loads(json.dumps(data, default=str))
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_recipe(name_or_path: str | Path = "demo", overrides: Sequence[str] = ()) -> Recipe:
    path = recipe_path(name_or_path)
    try:
        # TOML is UTF-8 whatever the locale; Windows editors (Notepad) may begin it with a byte-order mark, which
        # tomllib calls an 'Invalid statement (at line 1, column 1)' the user cannot see
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    data.setdefault("name", path.stem)
    # a bad value may come from the file or from --set: the message names both places to look
    return build(Recipe, merge_overrides(data, overrides), source=f"{path} (with --set)" if overrides else str(path))


RETIRED = (("acoustic", "model", "n_speakers"),)  # keys older versions saved, which never had an effect


def recipe_from_dict(data: dict[str, Any], overrides: Sequence[str] = (), source: str = "config") -> Recipe:
    """Read back a recipe saved as JSON (beside a dataset, a checkpoint or inside a bundle). Retired keys of
    older versions are dropped, so their datasets, runs and bundles still load; a recipe file may not use them."""
    data = merge_overrides(data, ())
    audio = data.get("audio") if isinstance(data, dict) else None
    if not isinstance(audio, dict) or "sample_rate" not in audio:
        # every saved recipe spells out its audio settings: without them a damaged one loaded the defaults (22050 Hz)
        # and a 16 kHz model's checkpoint was blamed on the other stage, "trained with another audio config"
        raise UserError(f"{source}: damaged configuration (no audio.sample_rate in its recipe)")
    for *path, key in RETIRED:
        node = data
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    for item in overrides:
        keys, value = parse_override(item)
        if keys[-1] == "size":
            _release_preset(data, keys[:-1], value)
    return build(Recipe, merge_overrides(data, overrides), source=f"{source} (with --set)" if overrides else source)


def _release_preset(data: dict[str, Any], section: list[str], new_size: Any) -> None:
    """A saved recipe spells out every value its `size` preset gave. When `--set SECTION.size=...` changes the
    size, the values that still equal the old preset's are the old preset, not choices: drop them so the new
    preset applies. Values set apart from the preset are kept."""
    cls: Any = Recipe
    node: Any = data
    for k in section:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        cls, node = hints.get(k), node.get(k) if isinstance(node, dict) else None
    presets = getattr(cls, "PRESETS", None)
    if not presets or not isinstance(node, dict) or node.get("size") not in presets or new_size == node.get("size"):
        return
    for key, value in presets[node["size"]].items():
        # compared as JSON, as the recipe was read: a preset's tuple is a list there, and (2, 3, 5) != [2, 3, 5] kept
        # the tiny vocoder's discriminator periods in a vocoder made base
        if node.get(key) == json.loads(json.dumps(value)):
            del node[key]


def read_recipe_json(path: Path) -> Recipe:
    try:
        # written as UTF-8 JSON; a file of other bytes (damaged, or saved in another encoding by an editor) was a
        # UnicodeDecodeError traceback, and the locale's encoding must not decide how it reads
        return recipe_from_dict(json.loads(Path(path).read_text(encoding="utf-8")), source=str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read configuration ({e})") from None
