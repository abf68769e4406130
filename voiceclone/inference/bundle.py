"""Trained models for inference: loaded from a run folder or a shared bundle, never by unpickling.

A bundle is one safetensors file: the acoustic model's tensors under `acoustic.`, the vocoder generator's
under `vocoder.`, and in the metadata the format name and version, the full recipe as JSON and what else is
needed to rebuild the networks. safetensors holds only raw tensors and a JSON header, so opening a file, even
a hostile one, runs no code. A run folder's `best.pt` checkpoints are read by run.load_checkpoint
(`torch.load(weights_only=True)`), which refuses anything but tensors and plain containers. Every size a
network is built with is checked (config bounds, metadata) before it is allocated, and every tensor must have
the type the network expects and finite values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from voiceclone import __version__
from voiceclone.config import Recipe, recipe_from_dict
from voiceclone.errors import UserError, check_output, parse_device, writing
from voiceclone.files import tmp_beside, write_atomic
from voiceclone.inference import melfit
from voiceclone.models.acoustic import AcousticModel
from voiceclone.models.vocoder import Vocoder
from voiceclone.run import best_path, load_checkpoint

FORMAT = "voiceclone-bundle"
FORMAT_VERSION = 1
MAX_SPEAKERS = 100_000  # training speakers a model may name (its classifier has one row each)
# Hz: around any recipe's f0 range (audio.f0_min is at least 20), so a median measured in it always fits; 1e-9
# was a -451 semitone shift, rendered unvoiced with exit 0
MIN_VOICE_F0, MAX_VOICE_F0 = 20.0, 8000.0
# log-mel units: every log-mel lies between log(LOG_FLOOR) = -11.5 and a few above 0, so no envelope with its
# level removed comes near; synthesis adds it to the output mel, where 1e30 was full-scale noise
MAX_VOICE_ENVELOPE = 30.0


@dataclass
class Model:
    """What synthesis and evaluation need: both networks, the recipe and where they came from."""

    recipe: Recipe
    acoustic: AcousticModel
    vocoder: Vocoder | None
    meta: dict[str, Any]
    source: str

    @property
    def device(self) -> torch.device:
        """Where the networks are (both are moved together by `to`)."""
        return next(self.acoustic.parameters()).device

    def render(self, mel: torch.Tensor, f0_hz: torch.Tensor, source_offset: torch.Tensor | None = None) -> torch.Tensor:
        """What synthesis plays for mel [B, n_mels, T] and f0_hz [B, T]: the vocoder's audio [B, T * hop], fitted
        to the mel above the bands that resolve harmonics (inference/melfit.py)."""
        if self.vocoder is None:
            raise ValueError("this model has no vocoder")
        wav = melfit.fit_to_mel(self.vocoder(mel, f0_hz, source_offset), mel, self.recipe.audio)
        # finite weights of 1e30 (or such a learned voice) pass the load's checks and overflow here; NaN clipped
        # and written as PCM was full-scale noise, exit 0
        if not bool(torch.isfinite(wav).all()):
            raise UserError(f"{self.source}: the model's output is not finite (NaN or infinity): its weights hold "
                            "absurd values")
        return wav

    def to(self, device: torch.device | str) -> "Model":
        self.acoustic.to(device)
        if self.vocoder is not None:
            self.vocoder.to(device)
        return self


def check_meta(meta: Any, where: str, acoustic: bool = False, n_mels: int | None = None) -> dict[str, Any]:
    """A model's stored metadata, checked before anything is sized by it. acoustic: an acoustic model's, which
    names the speakers it was trained on (its classifier has a row each; evaluate and fine-tuning map the
    dataset's speakers onto them). n_mels: the recipe's, which a fine-tuned voice's envelope must have."""
    if not isinstance(meta, dict):
        raise UserError(f"{where}: damaged model metadata (expected a JSON object, got {type(meta).__name__})")
    try:  # export writes it into the bundle's JSON header and evaluate into its report: a tensor in it was a
        json.dumps(meta)  # traceback there, after the whole evaluation
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: damaged model metadata ({e})") from None
    speakers = meta.get("speakers", [])
    if not isinstance(speakers, list) or not all(isinstance(x, str) for x in speakers):
        raise UserError(f"{where}: damaged model metadata ('speakers' must be a list of names)")
    if acoustic and not speakers:
        raise UserError(f"{where}: damaged model metadata (no 'speakers': an acoustic model names the speakers "
                        "it was trained on)")
    if len(speakers) > MAX_SPEAKERS:
        raise UserError(f"{where}: names {len(speakers)} training speakers; at most {MAX_SPEAKERS} are supported")
    f0 = meta.get("voice_f0_median")  # a fine-tuned voice's register: synthesis divides by it
    if f0 is not None and (isinstance(f0, bool) or not isinstance(f0, (int, float))
                           or not MIN_VOICE_F0 <= f0 <= MAX_VOICE_F0):
        raise UserError(f"{where}: damaged model metadata ('voice_f0_median' must be a number of Hz in "
                        f"[{MIN_VOICE_F0:g}, {MAX_VOICE_F0:g}], got {f0!r})")
    env = meta.get("voice_envelope")  # None: the voice was too unvoiced to measure one
    if env is not None and not (isinstance(env, list) and (n_mels is None or len(env) == n_mels) and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and abs(v) <= MAX_VOICE_ENVELOPE for v in env)):
        size = "" if n_mels is None else f"{n_mels} "
        raise UserError(f"{where}: damaged model metadata ('voice_envelope' must be a list of {size}numbers within "
                        f"±{MAX_VOICE_ENVELOPE:g})")
    return meta


def build_acoustic(recipe: Recipe, meta: dict[str, Any]) -> AcousticModel:
    model = AcousticModel(recipe.acoustic.model, recipe.audio, len(meta.get("speakers", [])))
    if meta.get("learned_voice"):
        model.learn_voice(torch.zeros(recipe.acoustic.model.speaker_dim))
    return model


M = TypeVar("M", bound=nn.Module)


def _build(make: Callable[[], M], state: dict[str, torch.Tensor], where: str, prefix: str = "") -> M:
    """make(), once the tensors' names and shapes are known to fit it. Each size is bounded alone but not their
    product: a bundle of a few MB whose recipe asked for hidden 4096 and 64 layers of each kind allocated 52 GB
    before a tensor was compared. Built first on the meta device, which allocates nothing, the network can be
    no larger than the tensors the file holds."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in make().state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or unexpected or wrong:
        what = (f"no tensor {prefix}{missing[0]}" if missing else f"unexpected tensor {prefix}{unexpected[0]}"
                if unexpected else f"{prefix}{wrong[0]} has shape {list(state[wrong[0]].shape)}, expected "
                f"{list(expected[wrong[0]])}")
        raise UserError(f"{where}: tensors do not match the configuration ({what})")
    return make()


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], where: str, prefix: str = "") -> None:
    """Load tensors that must match the module's types exactly and be finite: load_state_dict alone would
    cast int8 to float (a silent model) and take NaN (full-scale noise)."""
    expected = module.state_dict()
    for name, t in state.items():
        want = expected.get(name)
        if want is not None and t.dtype != want.dtype:
            raise UserError(f"{where}: tensor {prefix}{name} is {str(t.dtype).removeprefix('torch.')}, expected "
                            f"{str(want.dtype).removeprefix('torch.')}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: tensor {prefix}{name} has non-finite values (NaN or infinity)")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{where}: tensors do not match the configuration ({first[:200]})") from None


def load_model(path: Path | str, need_vocoder: bool = True, device: str | torch.device = "cpu") -> Model:
    """A run folder (its best checkpoints) or a bundle file."""
    path = Path(path)
    device = parse_device(device) if isinstance(device, str) else device  # before the minutes of loading
    if path.is_dir():
        model = _from_run(path, need_vocoder)
    elif path.is_file():
        model = _from_bundle(path, need_vocoder)
    else:
        raise UserError(f"{path}: no such run folder or model file")
    model.acoustic.eval()
    if model.vocoder is not None:
        model.vocoder.eval()
    return model.to(device)


BEST_KEYS = ("recipe", "meta", "modules", "epoch")


def _from_run(run: Path, need_vocoder: bool) -> Model:
    ac_path = best_path(run, "acoustic")
    if not ac_path.is_file():
        raise UserError(f"{run}: no trained acoustic model (expected {ac_path}; run `voiceclone train` first)")
    ac = load_checkpoint(ac_path, keys=BEST_KEYS)
    recipe = recipe_from_dict(ac["recipe"], source=str(ac_path))
    ac_meta = check_meta(ac["meta"], str(ac_path), acoustic=True, n_mels=recipe.audio.n_mels)
    ac_state = _module_state(ac, "model", ac_path)
    acoustic = _build(lambda: build_acoustic(recipe, ac_meta), ac_state, str(ac_path))
    _load_state(acoustic, ac_state, str(ac_path))
    meta = {"acoustic": ac["meta"], "acoustic_epoch": _epoch(ac, ac_path), "vocoder_epoch": None}
    vocoder = None
    voc_path = best_path(run, "vocoder")
    if voc_path.is_file():
        voc = load_checkpoint(voc_path, keys=BEST_KEYS)
        check_meta(voc["meta"], str(voc_path))
        voc_recipe = recipe_from_dict(voc["recipe"], source=str(voc_path))
        if voc_recipe.audio != recipe.audio:
            raise UserError(f"{voc_path}: the vocoder was trained with another audio config than the acoustic model")
        recipe = recipe_from_dict({**recipe.to_dict(), "vocoder": voc_recipe.to_dict()["vocoder"]})
        voc_state = _module_state(voc, "generator", voc_path)
        vocoder = _build(lambda: Vocoder(recipe.vocoder.model, recipe.audio), voc_state, str(voc_path))
        _load_state(vocoder, voc_state, str(voc_path))
        meta["vocoder"], meta["vocoder_epoch"] = voc["meta"], _epoch(voc, voc_path)
    elif need_vocoder:
        raise UserError(f"{run}: no trained vocoder (expected {voc_path}; run `voiceclone train --stage vocoder`)")
    return Model(recipe, acoustic, vocoder, meta, source=str(run))


def _epoch(checkpoint: dict[str, Any], path: Path) -> int:
    """The epoch a best checkpoint was saved at, which export and evaluate record as plain JSON."""
    epoch = checkpoint["epoch"]
    if type(epoch) is not int or epoch < 0:
        shown = repr(epoch) if isinstance(epoch, (int, float, str)) else f"a {type(epoch).__name__}"
        raise UserError(f"{path}: not a voiceclone checkpoint ('epoch' must be a whole number >= 0, got {shown[:40]})")
    return epoch


def _module_state(checkpoint: dict[str, Any], name: str, path: Path) -> dict[str, torch.Tensor]:
    """One network's tensors from a checkpoint, refused in one line unless a mapping of names to tensors."""
    state = checkpoint["modules"].get(name) if isinstance(checkpoint["modules"], dict) else None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{path}: not a voiceclone checkpoint (no tensors for the {name})")
    return state


def _from_bundle(path: Path, need_vocoder: bool) -> Model:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            recipe, meta = _bundle_metadata(header, path)  # checked before any tensor is read or model built
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a voiceclone model bundle (safetensors: {str(e)[:120]})") from None
    ac_state = _prefixed(tensors, "acoustic.")
    acoustic = _build(lambda: build_acoustic(recipe, meta.get("acoustic", {})), ac_state, str(path), "acoustic.")
    _load_state(acoustic, ac_state, str(path), "acoustic.")
    vocoder = None
    if any(k.startswith("vocoder.") for k in tensors):
        voc_state = _prefixed(tensors, "vocoder.")
        vocoder = _build(lambda: Vocoder(recipe.vocoder.model, recipe.audio), voc_state, str(path), "vocoder.")
        _load_state(vocoder, voc_state, str(path), "vocoder.")
    elif need_vocoder:
        raise UserError(f"{path}: the bundle has no vocoder")
    return Model(recipe, acoustic, vocoder, meta, source=str(path))


def _bundle_metadata(header: dict[str, str], path: Path) -> tuple[Recipe, dict[str, Any]]:
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: not a voiceclone model bundle (no '{FORMAT}' metadata)")
    version = header.get("format_version", "0")
    if not str(version).isdecimal():
        raise UserError(f"{path}: damaged bundle metadata (format_version {version!r} is not a whole number)")
    if int(version) > FORMAT_VERSION:
        raise UserError(f"{path}: bundle format {version} is newer than this voiceclone understands "
                        f"({FORMAT_VERSION}); upgrade voiceclone")
    try:
        recipe_data = json.loads(header["recipe"])
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged bundle metadata ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: damaged bundle metadata ('meta' must be a JSON object, got {type(meta).__name__})")
    recipe = recipe_from_dict(recipe_data, source=str(path))  # bounds every size the networks are built with
    # the networks' tensors fit any frame rate, so a hop or sample rate edited into the recipe still loaded and
    # synthesized at the wrong speed and pitch; bundles exported before the digest existed have none to check
    digest = header.get("audio_sha256")
    if digest is not None and digest != audio_digest(recipe):
        raise UserError(f"{path}: its recipe's audio settings are not the ones it was exported with (edited by "
                        "hand?); the networks work only at those")
    if "acoustic" not in meta:
        raise UserError(f"{path}: damaged bundle metadata (no 'acoustic' entry in 'meta')")
    check_meta(meta["acoustic"], f"{path} (acoustic metadata)", acoustic=True, n_mels=recipe.audio.n_mels)
    if "vocoder" in meta:
        check_meta(meta["vocoder"], f"{path} (vocoder metadata)")
    return recipe, meta


def audio_digest(recipe: Recipe) -> str:
    """SHA-256 of the audio settings, as the bundle's recipe JSON writes them."""
    return hashlib.sha256(json.dumps(recipe.to_dict()["audio"], sort_keys=True).encode()).hexdigest()


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def export(run: Path | str, out: Path | str) -> Path:
    """Write a run's best acoustic model and vocoder as one safetensors bundle."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: a bundle's name must end in .safetensors")
    check_output(out)
    model = load_model(run, need_vocoder=True)
    tensors = {f"acoustic.{k}": v.contiguous() for k, v in model.acoustic.state_dict().items()}
    tensors.update({f"vocoder.{k}": v.contiguous() for k, v in model.vocoder.state_dict().items()})
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "voiceclone_version": __version__,
              "recipe": model.recipe.to_json(), "audio_sha256": audio_digest(model.recipe),
              "meta": json.dumps(model.meta),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source_run": str(run)}
    data = save(tensors, metadata=header)  # in memory: a full disk then fails our write, with its errno
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, data, tmp=tmp_beside(out))
    return out
