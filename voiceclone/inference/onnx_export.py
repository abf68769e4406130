"""`voiceclone export RUN --onnx DIR`: the four networks as ONNX graphs, for runtimes without torch.

DIR holds:

    content_encoder.onnx  mel_normalized [B, n_mels, T] -> code [B, content_dim, T]
    speaker_encoder.onnx  mel [B, n_mels, R] -> speaker [B, speaker_dim]
    decoder.onnx          content [B, content_dim, T], f0_hz [B, T], energy [B, T], speaker [B, speaker_dim]
                          -> mel [B, n_mels, T]
    vocoder.onnx          mel [B, n_mels, T], f0_hz [B, T] -> free_real, free_imag, filter_real, filter_imag
                          [B, T, n_fft // 2 + 1]
    mel_basis.npy         the mel filterbank [n_mels, n_fft // 2 + 1] (float32; np.load(allow_pickle=False))
    config.json           the audio front end, sizes, every graph's inputs and outputs, and the arithmetic left to
                          the caller

Time (T, R) and batch are dynamic axes. What stays outside the graphs, because a stream replaces it with running
statistics or because ONNX has no complex numbers: the content encoder's two instance norms (each channel to zero
mean and unit variance over time, eps 1e-5: before the graph on the mel, after it on the code), the energy's mean
(the decoder takes energy minus its mean over the utterance), and the vocoder's harmonic source and inverse STFT
(audio = iSTFT(free + filter * STFT(source(f0)))), then the fit of that audio to its mel above 2 kHz
(inference/melfit.py; "fit" in config.json). examples/onnx_convert.py does all of it in numpy.

Exported with torch's TorchScript-based exporter (opset 17): the torch.export-based one needs onnxscript and
took 20x longer for the same graphs. The graphs are checked against torch with onnxruntime when it is installed.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from voiceclone import __version__
from voiceclone import audio as A
from voiceclone.inference.bundle import Model, load_model
from voiceclone.inference import melfit
from voiceclone.errors import UserError, check_output, first_few
from voiceclone.files import fsync_dir, stored_config, write_atomic
from voiceclone.inference.stream import content_code
from voiceclone.models.acoustic import INSTANCE_NORM_EPS
from voiceclone.models.modules import F0_REF_HZ, pitch_features
from voiceclone.models.vocoder import F0_SOURCE_MIN_HZ, HARMONIC_AMPLITUDE, MAX_MAGNITUDE, Vocoder

OPSET = 17
FORMAT = "voiceclone-onnx"
FORMAT_VERSION = 1
TOLERANCE = 1e-3  # largest |onnxruntime - torch| accepted on any graph output (float32 noise is ~1e-5)


class ContentGraph(nn.Module):
    """The content encoder between its instance norms."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.encoder = model.acoustic.content_encoder

    def forward(self, mel_normalized: Tensor) -> Tensor:
        return content_code(self.encoder, mel_normalized)


class SpeakerGraph(nn.Module):
    def __init__(self, model: Model) -> None:
        super().__init__()
        self.encoder = model.acoustic.speaker_encoder

    def forward(self, mel: Tensor) -> Tensor:
        return self.encoder(mel)


class DecoderGraph(nn.Module):
    """The decoder with its pitch features; energy comes in relative to the utterance's mean."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.decoder = model.acoustic.decoder

    def forward(self, content: Tensor, f0_hz: Tensor, energy: Tensor, speaker: Tensor) -> Tensor:
        return self.decoder(content, pitch_features(f0_hz), energy.unsqueeze(1), speaker)


class VocoderGraph(nn.Module):
    """The vocoder up to its two spectra (Vocoder.forward without the complex arithmetic)."""

    def __init__(self, vocoder: Vocoder) -> None:
        super().__init__()
        self.v = vocoder

    def forward(self, mel: Tensor, f0_hz: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:

        v = self.v
        x = v.norm(v.embed(torch.cat([mel, pitch_features(f0_hz)], dim=1)))
        for block in v.blocks:
            x = block(x)
        x = v.final_norm(x.transpose(1, 2))
        log_mag, phase = v.free(x).chunk(2, dim=-1)
        magnitude = log_mag.exp().clamp(max=MAX_MAGNITUDE)
        filt = v.filter(x).unflatten(-1, (-1, 2))
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase), filt[..., 0], filt[..., 1]


def _graphs(model: Model, frames: int = 64) -> dict[str, tuple[nn.Module, dict[str, Tensor], list[str], dict]]:
    """name -> (module, example inputs, output names, dynamic axes)."""
    ac = model.recipe.acoustic.model
    n_mels = model.recipe.audio.n_mels
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, n_mels, frames, generator=g) - 4
    f0 = torch.full((1, frames), 140.0)
    f0[:, ::5] = 0.0
    bt = {0: "batch", 1: "frames"}
    bct = {0: "batch", 2: "frames"}
    return {
        "content_encoder": (ContentGraph(model), {"mel_normalized": torch.randn(1, n_mels, frames, generator=g)},
                            ["code"], {"mel_normalized": bct, "code": bct}),
        "speaker_encoder": (SpeakerGraph(model), {"mel": mel}, ["speaker"], {"mel": bct, "speaker": {0: "batch"}}),
        "decoder": (DecoderGraph(model),
                    {"content": torch.randn(1, ac.content_dim, frames, generator=g), "f0_hz": f0,
                     "energy": torch.randn(1, frames, generator=g), "speaker": torch.randn(1, ac.speaker_dim, generator=g)},
                    ["mel"], {"content": bct, "f0_hz": bt, "energy": bt, "speaker": {0: "batch"}, "mel": bct}),
        "vocoder": (VocoderGraph(model.vocoder), {"mel": mel, "f0_hz": f0},
                    ["free_real", "free_imag", "filter_real", "filter_imag"],
                    {"mel": bct, "f0_hz": bt, **{k: bt for k in ("free_real", "free_imag", "filter_real", "filter_imag")}}),
    }


def export_onnx(model_path: Path | str, out: Path | str, check: bool = True) -> dict:
    """Write the ONNX graphs, mel basis and config of a run folder or bundle into the folder `out`.

    Returns {"files": [...], "parity": {graph: max |onnxruntime - torch|} (empty without onnxruntime)}.
    """
    try:
        importlib.import_module("onnx")  # torch's exporter writes the graphs through it
    except ImportError:
        raise UserError("export --onnx needs the onnx package: pip install 'voiceclone[onnx]' "
                        "(onnx and onnxruntime)") from None
    out = Path(out)
    if out.suffix in (".onnx", ".safetensors") or out.is_file():
        raise UserError(f"{out}: --onnx names a folder (the graphs and config.json go inside)")
    check_output(out, folder=True)
    _check_folder(out)
    model = load_model(model_path, need_vocoder=True)
    _check_finite(model)
    out.mkdir(parents=True, exist_ok=True)
    # config.json is written last and only once the graphs agree with torch: a folder that has it holds one
    # whole export, and an interrupted or failed export (even over an earlier one) leaves a folder without it
    (out / "config.json").unlink(missing_ok=True)
    files = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        for name, (module, inputs, outputs, axes) in _graphs(model).items():
            graph = io.BytesIO()
            torch.onnx.export(module.eval(), tuple(inputs.values()), graph, dynamo=False, opset_version=OPSET,
                              input_names=list(inputs), output_names=outputs, dynamic_axes=axes)
            files.append(out / f"{name}.onnx")
            write_atomic(files[-1], graph.getbuffer())
    basis = io.BytesIO()
    np.save(basis, A.mel_filterbank(model.recipe.audio), allow_pickle=False)
    files.append(out / "mel_basis.npy")
    write_atomic(files[-1], basis.getbuffer())
    parity = check_parity(model, out) if check and _have_onnxruntime() else {}
    bad = {k: v for k, v in parity.items() if not v <= TOLERANCE}  # NaN too
    if bad:
        raise UserError(f"{out}: onnxruntime disagrees with torch beyond {TOLERANCE:g} on {bad}")
    files.append(out / "config.json")
    write_atomic(files[-1], json.dumps(_config(model), indent=2).encode())
    fsync_dir(out)
    return {"files": [str(f) for f in files], "parity": parity}


def _check_finite(model: Model) -> None:
    """Every graph's output on its example inputs, and the decoder's with a fine-tuned model's own voice, must be
    finite: weights of 1e30 pass the load's checks, and their NaN was exported with a parity 'max |difference|
    nan' counted as agreement."""
    graphs = _graphs(model)
    runs = [(name, module, inputs) for name, (module, inputs, _, _) in graphs.items()]
    if model.acoustic.voice is not None:
        module, inputs, _, _ = graphs["decoder"]
        runs.append(("decoder (with the model's own voice)", module,
                     {**inputs, "speaker": model.acoustic.voice.detach().reshape(1, -1)}))
    for name, module, inputs in runs:
        with torch.inference_mode():
            got = module.eval()(*inputs.values())
        if not all(bool(torch.isfinite(t).all()) for t in (got if isinstance(got, tuple) else (got,))):
            raise UserError(f"{model.source}: the {name} gives non-finite values (NaN or infinity): its weights "
                            "hold absurd values")


def _check_folder(out: Path) -> None:
    """An export goes into a new or empty folder, or one an export wrote before: a folder holding anything
    else (a user's recordings) would get a config.json of ours beside them, or over one of theirs."""
    if not out.is_dir():
        return
    theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                    and not p.name.endswith((".onnx", ".onnx.data")) and p.name not in ("mel_basis.npy", "config.json"))
    if theirs:
        shown = first_few(theirs)
    elif (out / "config.json").exists() and stored_config(out, FORMAT) is None:
        shown = "a config.json of another program"
    else:
        return
    raise UserError(f"{out}: holds {shown}; --onnx writes into a new or empty folder, or one it wrote before")


def _config(model: Model) -> dict:
    audio, prep, ac = model.recipe.audio, model.recipe.prepare, model.recipe.acoustic.model
    voice = model.acoustic.voice
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "voiceclone_version": __version__, "opset": OPSET,
        "audio": {"sample_rate": audio.sample_rate, "n_fft": audio.n_fft, "win_length": audio.win_length,
                  "hop_length": audio.hop_length, "n_mels": audio.n_mels, "fmin": audio.fmin, "fmax": audio.fmax,
                  "f0_min": audio.f0_min, "f0_max": audio.f0_max, "log_floor": A.LOG_FLOOR,
                  "mel": "log(max(mel_basis @ sqrt(|STFT|^2 + 1e-9), log_floor)); frames centred on (t + 0.5) * hop: "
                         "reflect-pad (n_fft - hop) // 2 on the left, n_fft - hop - that on the right, periodic Hann "
                         "window of win_length centred in n_fft, T = samples // hop",
                  "energy": "0.5 * log(max(sum over bins of |STFT|^2, log_floor^2))"},
        "prepare": {"trim_top_db": prep.trim_top_db, "loudness_db": prep.loudness_db},
        "sizes": {"content_dim": ac.content_dim, "speaker_dim": ac.speaker_dim},
        "normalization": {"eps": INSTANCE_NORM_EPS,
                          "content_encoder": "instance norm (per channel over time, biased variance) "
                          "of the mel before the graph and of the code after it",
                          "energy": "the decoder takes energy minus its mean over the utterance"},
        "pitch": {"f0_center_hz": F0_REF_HZ, "shift": "f0 * reference median / source median over voiced "
                  "frames (unless the source's register is kept), times 2^(semitones / 12)"},
        "source": {"min_hz": F0_SOURCE_MIN_HZ, "unvoiced_fill_hz": F0_REF_HZ, "max_hz": audio.sample_rate / 4, "harmonic_amplitude": HARMONIC_AMPLITUDE,
                   "spectrum": "audio = iSTFT(free + filter * STFT(source)) on the mel's frame grid, clipped to [-1, 1]"},
        "voice": voice.detach().cpu().tolist() if voice is not None else None,
        "voice_envelope": model.meta.get("acoustic", {}).get("voice_envelope") if voice is not None else None,
        "fit": {"from_hz": melfit.FIT_FROM_HZ, "passes": melfit.PASSES, "gain_limit": melfit.GAIN_LIMIT,
                "band_centres_hz": A.mel_band_edges(audio)[1:-1].tolist(),
                "rule": "passes times, per band and frame: step = clip(total + mel given - mel of the audio, "
                        "-gain_limit, gain_limit) - total, total += step (total starts at 0), zero for bands "
                        "centred below from_hz; each STFT bin is scaled by exp of the mean of its bands' steps "
                        "weighted by mel_basis (normalised over the bands covering the bin), then inverted on "
                        "the same grid; clipped to [-1, 1] at the end"},
        "timbre": "out_mel += strength * (envelope_reference - envelope_output), envelope = mean log-mel of the "
                  "voiced frames (source F0 > 0) minus its mean over bins; none under 25 voiced frames",
        "graphs": {name: {"inputs": list(inputs), "outputs": outputs}
                   for name, (_, inputs, outputs, _) in _graphs(model, frames=8).items()},
    }


def _have_onnxruntime() -> bool:
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def check_parity(model: Model, folder: Path, frames: int = 157) -> dict[str, float]:
    """Max |onnxruntime - torch| of every output of every graph, on inputs of another length than the export's
    (so the dynamic axes are exercised)."""
    import onnxruntime as ort

    result = {}
    for name, (module, inputs, outputs, _) in _graphs(model, frames=frames).items():
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.inference_mode():
            want = module.eval()(*inputs.values())
        want = want if isinstance(want, tuple) else (want,)
        result[name] = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    return result
