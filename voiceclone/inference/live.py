"""`voiceclone live`: microphone to speakers through the streaming converter (inference/stream.py).

PortAudio (the `sounddevice` package, the `live` extra) calls back with each block of microphone samples and
takes a block to play. The callback only queues: the conversion runs in the main thread, the same
StreamConverter that `synthesize --stream` runs over a file, so what is tested on files is what plays here.
When the device does not run at the model's rate, soxr's streaming resamplers convert both ways.

What a listener hears is delayed by the algorithmic latency (block + lookahead), the compute of one block, and
the device's own input and output buffers (PortAudio reports these; printed at the start).
"""

from __future__ import annotations

import math
import queue
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from voiceclone.errors import UserError, stderr_console
from voiceclone.inference import BLOCK_MS, LOOKAHEAD_MS, TIMBRE_STRENGTH

INSTALL_PORTAUDIO = "apt-get install libportaudio2 (Debian/Ubuntu), brew install portaudio (macOS)"


def import_sounddevice() -> Any:
    """The sounddevice module, or a one-line UserError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise UserError("voiceclone live needs the sounddevice package: pip install 'voiceclone[live]'") from None
    except OSError as e:  # sounddevice is there but cannot load PortAudio
        raise UserError(f"voiceclone live: {str(e).splitlines()[0][:120]}; install PortAudio: {INSTALL_PORTAUDIO}") \
            from None
    return sounddevice


def devices(sd: Any) -> list[dict]:
    """PortAudio's devices as [{index, name, inputs, outputs, rate}]; a PortAudio failure is a UserError."""
    try:
        found = sd.query_devices()
    except Exception as e:  # sd.PortAudioError, or an OSError from a broken host API
        raise UserError(f"voiceclone live: no audio device (PortAudio: {str(e).splitlines()[0][:120]})") from None
    return [{"index": d.get("index", i), "name": d["name"], "inputs": int(d["max_input_channels"]),
             "outputs": int(d["max_output_channels"]), "rate": float(d["default_samplerate"])}
            for i, d in enumerate(found)]


def pick(found: list[dict], wanted: str | None, kind: str, default: Any) -> dict:
    """The device to use for `kind` ("inputs" or "outputs"): by index or name part, else PortAudio's default,
    else the first that has channels of that kind."""
    usable = [d for d in found if d[kind] > 0]
    what = "input" if kind == "inputs" else "output"
    if not usable:
        listed = f"{len(found)} devices, none with {what} channels" if found else "no devices"
        raise UserError(f"voiceclone live: no audio {what} device found (PortAudio lists {listed}); connect one, "
                        "or see `voiceclone live --list-devices`")
    if wanted is not None:
        matches = [d for d in usable if (wanted.isdecimal() and d["index"] == int(wanted))
                   or (not wanted.isdecimal() and wanted.lower() in d["name"].lower())]
        if not matches:
            raise UserError(f"--{what}-device {wanted}: no such {what} device (see `voiceclone live --list-devices`)")
        return matches[0]
    index = default[0 if kind == "inputs" else 1] if isinstance(default, (list, tuple)) else default
    return next((d for d in usable if d["index"] == index), usable[0])


def print_devices(console: Console, found: list[dict]) -> None:
    table = Table(title="audio devices")
    for col in ("index", "name", "inputs", "outputs", "default rate"):
        table.add_column(col)
    for d in found:
        table.add_row(str(d["index"]), d["name"], str(d["inputs"]), str(d["outputs"]), f"{d['rate']:.0f} Hz")
    console.print(table)


def live(model_path: Path, references: Sequence[Path], input_device: str | None = None,
         output_device: str | None = None, list_devices: bool = False, block_ms: float = BLOCK_MS,
         lookahead_ms: float = LOOKAHEAD_MS, transpose: float = 0.0, keep_pitch: bool = False,
         source_f0: float | None = None, seconds: float | None = None, device: str | None = None,
         console: Console | None = None, keep_output: bool = False,
         strength: float = TIMBRE_STRENGTH) -> dict:
    """The `voiceclone live` command. Runs until Ctrl-C, or for `seconds` of input. Returns what it measured
    (and, with keep_output, the converted audio at the model's rate under "converted")."""
    import soxr

    from voiceclone.inference.stream import StreamConverter, describe, latency_line, print_report
    from voiceclone.inference.synthesize import load_voice
    from voiceclone.threads import torch_threads

    console = console or stderr_console()
    _check_options(block_ms, lookahead_ms, strength, transpose, source_f0, seconds)
    sd = import_sounddevice()
    found = devices(sd)
    if list_devices:
        if found:
            print_devices(console, found)
        else:
            console.print("PortAudio lists no audio devices", highlight=False)
        return {"devices": found}
    default = getattr(getattr(sd, "default", None), "device", None)
    dev_in, dev_out = pick(found, input_device, "inputs", default), pick(found, output_device, "outputs", default)

    model, ref = load_voice(model_path, references, device, console)
    cfg = model.recipe.audio
    conv = StreamConverter(model, ref, block_ms=block_ms, lookahead_ms=lookahead_ms, transpose=transpose,
                           keep_pitch=keep_pitch, source_f0_median=source_f0, strength=strength)
    rate = _device_rate(sd, dev_in, dev_out, cfg.sample_rate)
    to_model = soxr.ResampleStream(rate, cfg.sample_rate, 1, dtype="float32") if rate != cfg.sample_rate else None
    to_device = soxr.ResampleStream(cfg.sample_rate, rate, 1, dtype="float32") if rate != cfg.sample_rate else None
    player = _Player()
    try:
        stream = sd.Stream(samplerate=rate, blocksize=max(1, round(conv.block_samples * rate / cfg.sample_rate)),
                           device=(dev_in["index"], dev_out["index"]), channels=1, dtype="float32",
                           callback=player.callback)
    except Exception as e:  # sd.PortAudioError: the device is busy, gone, or refuses the settings
        raise UserError(f"voiceclone live: cannot open {dev_in['name']!r} -> {dev_out['name']!r} "
                        f"({str(e).splitlines()[0][:120]})") from None
    console.print(latency_line(describe(conv.report, cfg)), highlight=False)
    console.print(f"{dev_in['name']} -> {dev_out['name']} at {rate} Hz; device buffers add "
                  f"{1000 * sum(getattr(stream, 'latency', (0.0, 0.0))):.0f} ms. Ctrl-C stops.", highlight=False)
    received, kept = 0, []
    limit = None if seconds is None else int(seconds * rate)
    try:
        with torch_threads(1), stream:
            while limit is None or received < limit:
                try:
                    x = player.inbox.get(timeout=2.0)
                except queue.Empty:
                    raise UserError(f"voiceclone live: {dev_in['name']!r} delivers no audio") from None
                received += len(x)
                y = conv.push(to_model.resample_chunk(x) if to_model else x)
                if keep_output:
                    kept.append(y)
                if len(y):
                    player.play(to_device.resample_chunk(y) if to_device else y)
    except KeyboardInterrupt:
        pass
    result = {**describe(conv.report, cfg), "blocks": len(conv.report.block_seconds), "seconds": received / rate,
              "underrun_ms": 1000 * player.underrun / rate, "xruns": player.xruns, "device_rate": rate,
              "input_device": dev_in["name"], "output_device": dev_out["name"]}
    print_report(console, result)
    if player.underrun > 0:
        console.print(f"{result['underrun_ms']:.0f} ms of silence played while waiting for converted audio "
                      "(the first blocks, or a machine too slow for this block size)", highlight=False)
    if player.xruns:
        console.print(f"the audio device reported {player.xruns} buffer overflows or underflows (audio lost "
                      "between the device and this program; a larger --block-ms helps)", highlight=False)
    if keep_output:
        result["converted"] = np.concatenate(kept) if kept else np.zeros(0, np.float32)
    return result


def _check_options(block_ms: float, lookahead_ms: float, strength: float, transpose: float,
                   source_f0: float | None, seconds: float | None) -> None:
    """Every option refused before a device or the model is opened."""
    from voiceclone.inference import timbre
    from voiceclone.inference.stream import check_stream_options
    from voiceclone.inference.synthesize import check_transpose

    check_stream_options(block_ms, lookahead_ms)
    timbre.check_strength(strength)
    check_transpose(transpose)
    if source_f0 is not None and not 20.0 <= source_f0 <= 2000.0:  # a divisor of the pitch shift
        raise UserError(f"--source-f0 {source_f0:g}: expected 20-2000 Hz")
    if seconds is not None and not 0 < seconds < math.inf:  # the number of samples to take: int(inf) overflows
        raise UserError(f"--seconds {seconds:g}: expected more than 0, finite (leave it out to run until Ctrl-C)")


def _device_rate(sd: Any, dev_in: dict, dev_out: dict, rate: int) -> int:
    """The model's rate if both devices take it, else the input device's own (resampled both ways)."""
    try:
        sd.check_input_settings(device=dev_in["index"], samplerate=rate, channels=1, dtype="float32")
        sd.check_output_settings(device=dev_out["index"], samplerate=rate, channels=1, dtype="float32")
    except Exception:  # sd.PortAudioError: the rate is not supported
        return int(dev_in["rate"])
    return rate


class _Player:
    """What PortAudio's thread and the conversion loop share: microphone blocks come in through `inbox`,
    converted audio (at the device's rate) waits in `pending` until the callback plays it. The callback
    only queues and copies; a block it cannot fill is padded with silence and counted in `underrun`."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[np.ndarray] = queue.Queue()
        self.pending: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.underrun = 0  # samples of silence played for want of converted audio
        self.xruns = 0  # callbacks whose status flagged an overflow or underflow of the device's buffers

    def play(self, y: np.ndarray) -> None:
        with self.lock:
            self.pending.append(y)

    def callback(self, indata, outdata, frames, time_info, status) -> None:
        if status:
            self.xruns += 1
        self.inbox.put(indata[:, 0].copy())
        filled = 0
        with self.lock:
            while filled < frames and self.pending:
                take = self.pending[0][: frames - filled]
                outdata[filled : filled + len(take), 0] = take
                filled += len(take)
                self.pending[0] = self.pending[0][len(take) :]
                if not len(self.pending[0]):
                    self.pending.pop(0)
        outdata[filled:, 0] = 0.0
        self.underrun += frames - filled
