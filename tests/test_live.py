"""`voiceclone live`: its errors without audio hardware, and its loop driven from a file through a fake
PortAudio (the `sounddevice` module replaced), which must give what the streaming core gives."""

from __future__ import annotations

import sys
import threading
import time
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from voiceclone import audio as A
from voiceclone.inference.bundle import load_model
from voiceclone.cli import app
from voiceclone.inference.live import live
from voiceclone.inference.stream import stream_file
from voiceclone.inference.synthesize import embed_references

runner = CliRunner()

MIC = {"name": "Fake USB Mic", "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 16000.0}
SPEAKERS = {"name": "Fake Speakers", "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 16000.0}


def fake_sounddevice(devices, feed: np.ndarray | None = None, played: list | None = None):
    """A stand-in for the sounddevice module: `devices` as query_devices() returns them; a Stream that calls
    its callback from a thread with `feed` block by block (then silence, until closed) and keeps what the
    callback plays in `played`."""
    sd = types.ModuleType("sounddevice")
    sd.query_devices = lambda: [dict(d, index=i) for i, d in enumerate(devices)]
    sd.default = types.SimpleNamespace(device=[0, 1])
    sd.check_input_settings = sd.check_output_settings = lambda **kwargs: None

    class Stream:
        latency = (0.01, 0.02)

        def __init__(self, samplerate, blocksize, device, channels, dtype, callback):
            self.blocksize, self.callback, self.stop = blocksize, callback, threading.Event()

        def run(self):  # as a device: blocks until stopped, silence once `feed` is over
            i = 0
            while not self.stop.is_set():
                x = np.zeros((self.blocksize, 1), np.float32)
                chunk = feed[i : i + self.blocksize]
                x[: len(chunk), 0] = chunk
                out = np.zeros((self.blocksize, 1), np.float32)
                self.callback(x, out, self.blocksize, None, None)
                played.append(out[:, 0].copy())
                i += self.blocksize
                time.sleep(0.005)

        def __enter__(self):
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.stop.set()
            self.thread.join()

    sd.Stream = Stream
    return sd


def invoke(*args):
    return runner.invoke(app, ["live", *args])


@pytest.fixture
def model_args(tiny_run):
    return ["--model", str(tiny_run["run"]), "--reference", str(tiny_run["corpus"] / "spk000" / "spk000_000.wav")]


def one_line_error(r, message: str) -> None:
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output
    assert r.output.strip().startswith("error:") and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1


def test_no_audio_device_is_one_line_and_exit_2(monkeypatch, model_args):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    one_line_error(invoke(*model_args), "no audio input device found (PortAudio lists no devices)")
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([SPEAKERS]))
    one_line_error(invoke(*model_args), "no audio input device found (PortAudio lists 1 devices, none with input")
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([MIC]))
    one_line_error(invoke(*model_args), "no audio output device found")
    broken = fake_sounddevice([])

    def fail():
        raise OSError("Error querying device -1")

    broken.query_devices = fail
    monkeypatch.setitem(sys.modules, "sounddevice", broken)
    one_line_error(invoke(*model_args), "no audio device (PortAudio: Error querying device -1)")


@pytest.mark.parametrize("option, message", [(["--transpose", "nan"], "--transpose nan: expected"),
                                             (["--source-f0", "0"], "--source-f0 0: expected 20-2000 Hz"),
                                             (["--seconds", "-1"], "--seconds -1: expected more than 0"),
                                             # inf passed, and int(inf * rate) raised OverflowError once live
                                             (["--seconds", "inf"], "--seconds inf: expected more than 0, finite")])
def test_nonsense_options_are_one_line_before_any_device_or_model(monkeypatch, tmp_path, option, message):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    one_line_error(invoke("--model", str(tmp_path / "none"), *option), message)


def test_missing_sounddevice_or_portaudio_says_what_to_install(monkeypatch, model_args, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import sounddevice -> ImportError
    one_line_error(invoke(*model_args), "pip install 'voiceclone[live]'")
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")  # what sounddevice does
    monkeypatch.delitem(sys.modules, "sounddevice")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(invoke(*model_args), "PortAudio library not found; install PortAudio: apt-get install libportaudio2")


def test_devices_are_listed_and_chosen_by_index_or_name(monkeypatch, model_args):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([MIC, SPEAKERS]))
    r = invoke("--list-devices")
    assert r.exit_code == 0 and "Fake USB Mic" in r.output and "Fake Speakers" in r.output, r.output
    one_line_error(invoke(*model_args, "--input-device", "Nonexistent"), "--input-device Nonexistent: no such input")
    one_line_error(invoke(*model_args, "--output-device", "0"), "--output-device 0: no such output device")
    one_line_error(invoke(), "--model is needed")


def test_the_live_loop_is_the_streaming_core(monkeypatch, tiny_run):
    model = load_model(tiny_run["run"])
    corpus = tiny_run["corpus"]
    ref_path = corpus / "spk000" / "spk000_000.wav"
    y = A.load_audio(corpus / "spk005" / "spk005_001.wav", 16000)
    played: list[np.ndarray] = []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([MIC, SPEAKERS], feed=y, played=played))
    result = live(tiny_run["run"], [ref_path], input_device="usb mic", output_device="speakers",
                  seconds=len(y) / 16000, keep_output=True)
    # the fake delivers whole blocks, the last one padded with silence: the same input for the file stream
    fed = np.pad(y, (0, -len(y) % 1280))
    expected, _ = stream_file(model, embed_references(model, [ref_path]), fed)
    got = result["converted"]
    assert len(got) >= len(y) - 2 * 1280  # all but the blocks still waiting for their lookahead
    np.testing.assert_allclose(got, expected[: len(got)], atol=1e-5)
    assert result["input_device"] == "Fake USB Mic" and result["latency_ms"] == pytest.approx(144.0)
    heard = np.concatenate(played)
    assert np.abs(heard).max() > 0  # converted audio reached the speakers


def test_the_player_plays_what_is_converted_pads_with_silence_and_counts_what_went_wrong():
    from voiceclone.inference.live import _Player

    player = _Player()
    mic = np.arange(8, dtype=np.float32).reshape(8, 1)
    out = np.full((8, 1), 9.0, np.float32)
    player.play(np.ones(3, np.float32))
    player.play(2 * np.ones(3, np.float32))
    player.callback(mic, out, 8, None, None)
    np.testing.assert_array_equal(out[:, 0], [1, 1, 1, 2, 2, 2, 0, 0])  # nothing more to play: silence
    np.testing.assert_array_equal(player.inbox.get_nowait(), np.arange(8))
    assert player.underrun == 2 and player.xruns == 0 and not player.pending
    player.play(3 * np.ones(12, np.float32))
    player.callback(mic, out, 8, None, "input overflow")  # PortAudio's status: a buffer ran over
    assert (out[:, 0] == 3).all() and len(player.pending[0]) == 4  # the rest waits for the next block
    assert player.underrun == 2 and player.xruns == 1
