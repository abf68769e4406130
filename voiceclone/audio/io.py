"""Decoding and cleaning: any audio file -> mono float32 at the project's rate, trimmed, split at quiet
points and loudness-normalized. numpy and soxr only; `prepare` and `synthesize` both clean through here.

Stored audio is int16; `to_int16` and `from_int16` are the one pair of conversions (scale 32768 both ways).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from voiceclone.config import PrepareConfig
from voiceclone.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")
SILENCE_PEAK = 1e-4  # a file whose peak stays below this (-80 dBFS) holds no usable signal
LOUDNESS_FRAME = 512  # samples per frame when measuring the active level
# A sample this many times the RMS of the loud frames (those just below the loudest 1%) is a click or corrupt
# data: the peaks of real speech stay within 8x (LibriSpeech), a pulse train at 80 Hz within 15x.
OUTLIER_RATIO = 30.0
INT16_SCALE = 32768.0  # full scale of stored int16 audio: x / 32768 in [-1, 1), the convention of soundfile
# Below this a file carries no speech band (telephone audio is 8 kHz). A header that claims such a rate is
# damaged, and trusting it would resample a small file into a huge one (1 Hz -> 16 kHz: 16000x the samples).
MIN_SAMPLE_RATE = 4000
OGG_MAX_PAGE = 27 + 255 + 255 * 255  # bytes: a page header, 255 lacing values and 255 segments of 255 bytes
OGG_END_OF_STREAM = 0x04  # header-type flag of the last page of a logical stream


_STDERR_LOCK = threading.Lock()


class AudioError(UserError):
    """A file that cannot be used; `reason` is the short tag that report.json counts by."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@contextmanager
def quiet_decoder() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block: libmpg123, libsndfile's mp3 decoder, prints its
    own notes on a damaged file ("Note: Illegal Audio-MPEG-Header ...", "Warning: Xing stream size off ...")
    straight to stderr, before and beside the one line an AudioError gives.

    The swap is process-wide, so whatever another thread writes meanwhile is lost too. Files are decoded in
    the thread that prints (prepare's workers are processes; synthesis threads only compute), so that is at
    worst one refresh of a progress bar, which the next one redraws. The lock keeps concurrent uses from
    restoring each other's descriptor; blocks are short (one open, one read), never across a yield.
    """
    with _STDERR_LOCK:
        saved = _stderr_to_null()
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)


@contextmanager
def decoding(path: Path, reason: str = "corrupt") -> Iterator[None]:
    """A libsndfile call on `path`, quiet (`quiet_decoder`), its exception an AudioError with `reason` and the
    decoder's own words; a "corrupt" file whose format the decoder does not recognise is "not audio". Our own
    AudioErrors pass."""
    try:
        with quiet_decoder():
            yield
    except AudioError:
        raise
    except Exception as e:  # libsndfile raises LibsndfileError, RuntimeError or TypeError by format
        message = _decoder_message(e)
        if reason == "corrupt" and "not recognised" in message.lower():
            reason = "not audio"
        raise AudioError(path, reason, message) from None


def _stderr_to_null() -> int | None:
    """Point descriptor 2 at /dev/null; returns a copy of the old one, or None where there is none to swap."""
    try:
        sys.stderr.flush()  # what Python wrote before still goes out
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # stderr closed: nothing to silence
        return None
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(saved)
        return None
    os.dup2(null, 2)
    os.close(null)
    return saved


def sf_path(path: Path | str) -> str | bytes:
    """`path` as libsndfile is to open it: the file system's own bytes on POSIX, since soundfile encodes a str
    as strict UTF-8 and a name from an old Latin-1 archive (its stray bytes lone surrogates in Python) would
    fail as if the file were damaged; Windows paths are text and go as they are."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def to_int16(y: np.ndarray) -> np.ndarray:
    """[T] float in [-1, 1] -> [T] int16 (rounded, clipped), the stored form."""
    return np.clip(np.round(y * INT16_SCALE), -32768, 32767).astype(np.int16)


def from_int16(y: np.ndarray) -> np.ndarray:
    """[T] int16 as stored -> [T] float32 in [-1, 1)."""
    return np.asarray(y).astype(np.float32) / np.float32(INT16_SCALE)


def load_audio(path: Path | str, sample_rate: int) -> np.ndarray:
    """Decode any format libsndfile reads, mix to mono, resample with soxr (high quality). [T] float32.

    Raises AudioError with one of the reasons: missing, empty file, not audio, corrupt, unsupported sample
    rate, truncated, no samples, non-finite samples.
    """
    path = Path(path)
    check_file(path)
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")
    with decoding(path), sf.SoundFile(sf_path(path)) as f:
        declared, sr, log = f.frames, f.samplerate, f.extra_info
        _check_rate(path, sr)
        if f.format == "OGG":
            _check_ogg_end(path)
        y = f.read(dtype="float32", always_2d=True)
    if _truncated(log, declared, len(y)):
        raise AudioError(path, "truncated", f"{len(y)} of {declared} frames" if declared > len(y) else "")
    if y.size == 0:
        raise AudioError(path, "no samples")
    mono = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(path, "non-finite samples")
    if y.shape[1] > 1:
        _check_mix(path, float(np.abs(y).max()), float(np.abs(mono).max()))
    return resample(mono, sr, sample_rate)


def _check_mix(path: Path, channels_peak: float, mixed_peak: float) -> None:
    """Channels that are one signal and its inverse mix to mono as silence: a loud file was refused as silent."""
    if mixed_peak < SILENCE_PEAK <= channels_peak:
        raise AudioError(path, "channels cancel", "silent mixed to mono: one channel is the other inverted; "
                                                  "invert it or keep one channel")


def check_file(path: Path) -> None:
    """Refuse, before opening it, what is not a regular file. A named pipe (mkfifo) blocks the open until
    something writes to it, forever if nothing does, and one from process substitution (<(sox ...)) can be
    read only once: the header read would take what the decoding needs."""
    if path.is_dir():
        raise AudioError(path, "a folder", "not an audio file")
    if not path.is_file():
        if path.exists():
            raise AudioError(path, "not a regular file", "a pipe or a device; give a file")
        if path.is_symlink():  # exists() follows it: a link to nothing, or to itself round a loop
            raise AudioError(path, "missing", f"a link to {os.readlink(path)}, which does not resolve to a file")
        raise AudioError(path, "missing", "no such file")


def _decoder_message(e: Exception) -> str:
    """libsndfile's reason, without its "Error opening '<path>': " (the path leads our line already, and a long
    one cut the reason off). Of a file that exists, "File does not exist or is not a regular file" is what the
    mp3 decoder says when it finds no stream it can read."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = re.sub(r"^Error opening b?(['\"]).*?\1: ", "", text)  # a bytes name (sf_path) shows as b'...'
    if text.startswith("File does not exist or is not a regular file"):
        text = "no audio stream the decoder can read"
    return text[:120]


def _check_rate(path: Path | str, rate: int) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(path, "unsupported sample rate", f"{rate} Hz; at least {MIN_SAMPLE_RATE} Hz")


def resample(y: np.ndarray, rate: int, target: int) -> np.ndarray:
    """[T] at `rate` -> [T * target / rate] float32 at `target` (soxr, high quality)."""
    if rate != target:
        y = soxr.resample(y, rate, target, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


def _truncated(log: str, declared: int, read: int) -> bool:
    """Whether libsndfile's log or frame count says the file ends before its header says it should.

    libsndfile quietly shortens a file whose audio chunk runs past the end of the file, and says so only in
    its log, each format in its own words: WAV "data : N (should be M)", AIFF " SSND : N (should be M)", AU
    "  Data Size : N (should be M)"; streaming writers declare 0 or 0xFFFFFFFF bytes, which is no
    truncation. RF64 keeps the length in its ds64 chunk ("Calculated frame count M does not match value
    from 'ds64' chunk of N"). An mp3 instead decodes fewer frames than its header declares; an Ogg file
    declares none (see _check_ogg_end).
    """
    for m in re.finditer(r"^[ \t]*(?:data|SSND|Data Size)\s*:\s*(\d+)\s*\(should be (\d+)\)", log, re.MULTILINE):
        size, actual = int(m[1]), int(m[2])
        if 0 < size < 0xFFFFFFFF and actual < size:
            return True
    for m in re.finditer(r"Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)", log):
        if int(m[1]) < int(m[2]):
            return True
    if "ended unexpectedly" in log:
        return True
    # 1% slack: mp3 frame counts from a Xing header are estimates
    return declared > 0 and read < 0.99 * declared


def _check_ogg_end(path: Path) -> None:
    """Refuse an Ogg file (Vorbis, Opus) cut short. Its header declares no length: libsndfile takes the
    granule position of the last whole page as the length, so a cut file reads as a complete shorter one,
    and says so only in notes that differ by codec. The format itself is the witness: the last page of a
    stream carries the end-of-stream flag, so a file whose last whole page lacks it stops inside a page or
    between two. Bytes after a flagged page (an appended tag) are no cut, and a tail with no whole page at
    all (over two pages of such bytes) is no evidence either way."""
    flags = _last_ogg_page_flags(path)
    if flags is not None and not flags & OGG_END_OF_STREAM:
        raise AudioError(path, "truncated", "the Ogg stream stops before its last page")


def _last_ogg_page_flags(path: Path) -> int | None:
    """The header-type flags of the last whole page in the file, None if its tail holds none. A cut page is
    shorter than OGG_MAX_PAGE, so the last whole page starts within two of them of the end."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 2 * OGG_MAX_PAGE))
        tail = f.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        if _whole_ogg_page(tail, at):
            return tail[at + 5]
    return None


def _whole_ogg_page(data: bytes, at: int) -> bool:
    """Whether a complete page starts at data[at]: all its bytes present and its CRC right. The CRC tells a
    page from the bytes "OggS" inside compressed audio, and a page cut short from a whole one."""
    if at + 27 > len(data) or data[at + 4] != 0:  # version 0 is the only one
        return False
    segments = data[at + 26]
    if at + 27 + segments > len(data):
        return False
    end = at + 27 + segments + sum(data[at + 27 : at + 27 + segments])
    if end > len(data):
        return False
    page = bytearray(data[at:end])
    page[22:26] = bytes(4)  # the CRC is computed with its own field zeroed
    return _ogg_crc(page) == int.from_bytes(data[at + 22 : at + 26], "little")


def _ogg_crc(data: bytes | bytearray) -> int:
    """Ogg's page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, initial value 0 (zlib's crc32 is
    the reflected one). A page is at most 64 KiB and one or two are checked per file, so Python is fast enough."""
    table = _ogg_crc_table()
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


@functools.lru_cache(maxsize=1)
def _ogg_crc_table() -> tuple[int, ...]:
    """The CRC's byte table, built once per process rather than for every candidate page."""
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = (r << 1) ^ 0x04C11DB7 if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


def trim_bounds(y: np.ndarray, top_db: float, frame_length: int = 1024, hop_length: int = 256) -> tuple[int, int]:
    """(start, end) of `y` [T] without the leading and trailing parts quieter than `top_db` below its loudest frame.

    The result of librosa.effects.trim (centred frames, constant padding, frame power in dB relative to
    the loudest frame), computed from one cumulative sum: importing librosa.effects costs seconds per process
    and its framing dominated the cleaning step. (0, 0) when nothing is above the threshold.
    """
    if y.size == 0:
        return 0, 0
    half = frame_length // 2
    sq = np.zeros(len(y) + 2 * half + 1)
    np.cumsum(np.square(y, dtype=np.float64), out=sq[half + 1 : half + 1 + len(y)])
    sq[half + 1 + len(y) :] = sq[half + len(y)]
    n = 1 + (len(y) + 2 * half - frame_length) // hop_length
    starts = np.arange(n) * hop_length
    power = (sq[starts + frame_length] - sq[starts]) / frame_length
    db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(float(power.max()), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop_length), int(min(len(y), (loud[-1] + 1) * hop_length))


def normalize_loudness(y: np.ndarray, prep: PrepareConfig) -> np.ndarray:
    """Scale `y` so that its active part (frames within trim_top_db of the loudest) has RMS prep.loudness_db
    dBFS, then lower it if needed so that the peak stays at or below 0.99. [T] -> [T] float32."""
    gain = loudness_gain(frame_rms(y, LOUDNESS_FRAME), float(np.abs(y).max()) if y.size else 0.0, prep)
    return (y * gain).astype(np.float32)


def loudness_gain(frame_rms: np.ndarray, peak: float, prep: PrepareConfig) -> float:
    """The gain normalize_loudness applies, from the RMS of LOUDNESS_FRAME-sample frames and the peak, so a
    file read block by block gets exactly the treatment of one read whole."""
    active = frame_rms[frame_rms > frame_rms.max() * 10 ** (-prep.trim_top_db / 20)] if frame_rms.size else frame_rms
    level = float(np.sqrt(np.mean(active**2))) if active.size else 0.0
    gain = 10 ** (prep.loudness_db / 20) / max(level, 1e-8)
    if peak * gain > 0.99:  # never clip: loudness yields to the peak
        gain *= 0.99 / (peak * gain)
    return gain


def outlier_ceiling(frame_rms: np.ndarray) -> float:
    """The level above which a sample is an outlier, from the RMS of LOUDNESS_FRAME-sample frames: judged by
    the loud frames short of the loudest few, which one wild sample cannot move. inf with too few frames."""
    k = max(3, frame_rms.size // 100)
    return OUTLIER_RATIO * float(np.partition(frame_rms, -k)[-k]) if frame_rms.size >= k else float("inf")


def declick(y: np.ndarray) -> np.ndarray:
    """`y` [T] with its outlier samples (outlier_ceiling) brought down to the peak of the rest, the same array
    when it has none. One sample at 1e30 in a float file set trimming and loudness relative to itself: the
    speech 40 dB below it was trimmed away or came out at a tenth of its level."""
    out = np.abs(y) > outlier_ceiling(frame_rms(y, LOUDNESS_FRAME)) if y.size else np.zeros(0, bool)
    if not out.any():
        return y
    rest = float(np.abs(y[~out]).max(initial=0.0))
    return np.clip(y, -rest, rest).astype(np.float32)


def stream_audio(path: Path | str, sample_rate: int, block_seconds: float = 20.0) -> Iterator[np.ndarray]:
    """Decode block by block, mix to mono, resample with soxr's streaming resampler: [T_i] float32 blocks whose
    concatenation is the file at `sample_rate`. Memory does not depend on the file's length."""
    path = Path(path)
    check_file(path)
    with decoding(path, "unreadable"):
        f = sf.SoundFile(sf_path(path))
    with f:
        _check_rate(path, f.samplerate)
        declared = f.frames
        if _truncated(f.extra_info, 0, 0):  # a WAV cut short says so in its header's log, before any block
            raise AudioError(path, "truncated")
        if f.format == "OGG":
            with decoding(path):
                _check_ogg_end(path)
        rs = (soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
              if f.samplerate != sample_rate else None)
        size = max(1, int(block_seconds * f.samplerate))
        read, channels_peak, mixed_peak = 0, 0.0, 0.0
        while True:
            with decoding(path):  # damage past the header shows only here (libsndfile: "internal error")
                frames = f.read(size, dtype="float32", always_2d=True)
            x = frames.mean(axis=1)
            read += len(x)
            last = len(x) < size
            if not np.isfinite(x).all():
                raise AudioError(path, "non-finite samples")
            if last and _truncated("", declared, read):  # a compressed stream that ends early: known only now
                raise AudioError(path, "truncated", f"{read} of {declared} frames")
            if frames.shape[1] > 1 and len(x):
                channels_peak = max(channels_peak, float(np.abs(frames).max()))
                mixed_peak = max(mixed_peak, float(np.abs(x).max()))
            if last and frames.shape[1] > 1:
                _check_mix(path, channels_peak, mixed_peak)
            y = rs.resample_chunk(x, last=last) if rs is not None else x
            if len(y):
                yield np.ascontiguousarray(y, dtype=np.float32)
            if last:
                return


def _check_not_silent(y: np.ndarray, path: Path | str) -> None:
    if (float(np.abs(y).max()) if y.size else 0.0) < SILENCE_PEAK:
        raise AudioError(path, "silent")


def clean(y: np.ndarray, prep: PrepareConfig, path: Path | str = "audio") -> np.ndarray:
    """Trim silence at both ends and bring the active part to the target loudness. [T] -> [T'] float32."""
    y = declick(y)
    _check_not_silent(y, path)
    start, end = trim_bounds(y, prep.trim_top_db)
    return normalize_loudness(y[start:end], prep)


def utterances(y: np.ndarray, prep: PrepareConfig, sample_rate: int,
               path: Path | str = "audio") -> list[tuple[int, int, np.ndarray]]:
    """A decoded file -> the utterances `prepare` keeps: [(start, end, audio [end - start] float32)].

    Trims the ends, splits what is longer than prep.max_seconds at its quietest points, trims and
    normalizes every piece on its own, and drops pieces shorter than prep.min_seconds. start/end are
    sample positions in `y`. Raises AudioError "silent" or "too short" when nothing is left.
    """
    y = declick(y)
    _check_not_silent(y, path)
    a, b = trim_bounds(y, prep.trim_top_db)
    min_len = int(prep.min_seconds * sample_rate)
    spans = split_at_quiet(y[a:b], sample_rate, prep.max_seconds, prep.min_seconds)
    pieces = []
    for s, e in spans:
        piece = y[a + s : a + e]
        if float(np.abs(piece).max(initial=0.0)) < SILENCE_PEAK:
            continue
        if len(spans) > 1:  # cuts land in pauses, so each piece gets its own trimmed ends
            ps, pe = trim_bounds(piece, prep.trim_top_db)
            s, e, piece = s + ps, s + pe, piece[ps:pe]
        if e - s >= min_len:
            pieces.append((a + s, a + e, normalize_loudness(piece, prep)))
    if not pieces:
        raise AudioError(path, "too short", f"{(b - a) / sample_rate:.2f} s after trimming, "
                                            f"minimum {prep.min_seconds:g} s")
    return pieces


def split_at_quiet(y: np.ndarray, sample_rate: int, max_seconds: float, min_seconds: float) -> list[tuple[int, int]]:
    """Cut `y` into pieces of at most max_seconds at its quietest 20 ms, keeping each side >= min_seconds.

    Returns (start, end) sample ranges covering `y`.
    """
    max_len, min_len = int(max_seconds * sample_rate), int(min_seconds * sample_rate)
    if len(y) <= max_len:
        return [(0, len(y))]
    win = max(1, sample_rate // 50)
    rms = frame_rms(y, win)
    pieces, stack = [], [(0, len(y))]
    while stack:
        a, b = stack.pop()
        if b - a <= max_len:
            pieces.append((a, b))
            continue
        lo, hi = (a + min_len) // win + 1, (b - min_len) // win
        if hi <= lo:  # cannot split while keeping both sides long enough
            pieces.append((a, b))
            continue
        cut = (lo + int(np.argmin(rms[lo:hi]))) * win
        stack += [(cut, b), (a, cut)]
    return sorted(pieces)


def split_evenly(y: np.ndarray, sample_rate: int, pieces: int, slack_seconds: float) -> list[tuple[int, int]]:
    """Cut `y` into `pieces` of nearly equal length, each cut at the quietest 20 ms within slack_seconds of
    its ideal place (k * len / pieces): pieces that parallel workers finish together, cut in pauses.

    Returns (start, end) sample ranges covering `y`.
    """
    if pieces <= 1 or len(y) < 2 * pieces * sample_rate // 50:
        return [(0, len(y))]
    win = max(1, sample_rate // 50)
    rms = frame_rms(y, win)
    slack = max(0, min(int(slack_seconds * sample_rate), len(y) // (4 * pieces))) // win
    cuts = [0]
    for k in range(1, pieces):
        centre = k * len(rms) // pieces
        lo, hi = max(centre - slack, cuts[-1] // win + 1), min(centre + slack + 1, len(rms))
        cuts.append((lo + int(np.argmin(rms[lo:hi]))) * win if lo < hi else max(centre, lo) * win)
    cuts.append(len(y))
    return list(zip(cuts[:-1], cuts[1:]))


def _frames(y: np.ndarray, win: int) -> np.ndarray:
    """Consecutive `win`-sample frames of y [T] -> [max(1, T // win), win] (a shorter y: one frame of it)."""
    n = max(1, len(y) // win)
    return y[: n * win].reshape(n, win) if len(y) >= win else y[None, :]


def frame_rms(y: np.ndarray, win: int) -> np.ndarray:
    """RMS of consecutive `win`-sample frames of y [T] -> [max(1, T // win)] float64 (a shorter y: one frame)."""
    return np.sqrt(np.mean(_frames(y, win).astype(np.float64) ** 2, axis=1))


def frame_peaks(y: np.ndarray, win: int) -> np.ndarray:
    """Peak magnitude of the frames frame_rms measures: [T] -> [max(1, T // win)]."""
    return np.abs(_frames(y, win)).max(axis=1, initial=0.0)
