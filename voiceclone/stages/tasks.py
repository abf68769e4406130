"""What differs between the models trained by the one loop (train/loop.py), and what evaluation validates.

A task owns its networks and data, names its optimizer groups (stepped in order on every batch), and
returns *named* losses; the trainer multiplies each by the same-named weight from the recipe. `monitor`
names the validation loss that early stopping, `best` and the convergence status follow; the same
quantity measured on training batches is reported as `train_loss`, so the two curves are comparable.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voiceclone import audio as A
from voiceclone.evaluation import metrics
from voiceclone.inference import timbre
from voiceclone.config import FinetuneConfig, Recipe
from voiceclone.data.dataset import Segments, reference_pool
from voiceclone.data.store import Dataset
from voiceclone.models.acoustic import AcousticModel, energy_features, pitch_features
from voiceclone.models.discriminators import Discriminators
from voiceclone.models.vocoder import Vocoder
from voiceclone.stages import augment
from voiceclone.stages import finetune as ft
from voiceclone.stages.losses import (aam_softmax_loss, discriminator_loss, feature_matching_loss,
                                     generator_adversarial_loss)

GENERATED = "generated"  # the batch key under which VocoderTask keeps the generator's output for both groups


def _log_median(f0: Tensor) -> Tensor:
    """f0 [B, T] (0 = unvoiced) -> log of each row's median voiced F0 [B] (log 150 Hz for an unvoiced row)."""
    logs = torch.where(f0 > 0, torch.log(f0.clamp(min=1.0)), torch.full_like(f0, float("nan")))
    med = torch.nanmedian(logs, dim=1).values
    return torch.nan_to_num(med, nan=float(np.log(150.0)))


def _frozen_call(module: nn.Module, *args: Tensor) -> Tensor:
    """module(*args) with its parameters detached: gradients reach the inputs, never the module."""
    return torch.func.functional_call(module, {n: p.detach() for n, p in module.named_parameters()}, args)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """pred, target [B, M, T], mask [B, T] -> per-item mean absolute error [B]."""
    err = (pred.float() - target.float()).abs().mean(1) * mask
    return err.sum(1) / mask.sum(1).clamp(min=1)


class Task(ABC):
    stage: str
    monitor = "mel"
    groups: tuple[str, ...]
    averaged: tuple[str, ...]  # the networks inference uses (their weight average is validated, train/ema.py)

    def __init__(self, recipe: Recipe, dataset: Dataset, device: torch.device) -> None:
        self.recipe, self.dataset, self.device = recipe, dataset, device
        self.wrapped: dict[str, nn.Module] = {}

    @property
    def train_cfg(self):
        return getattr(self.recipe, self.stage).train

    @property
    def weights(self) -> dict[str, float]:
        return dataclasses.asdict(getattr(self.recipe, self.stage).loss)

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Checkpointed networks by name (unwrapped)."""

    @abstractmethod
    def param_groups(self) -> dict[str, list[dict[str, Any]]]:
        """Optimizer name -> torch param groups, each with a `base_lr` (the schedule multiplies it)."""

    def meta(self) -> dict[str, Any]:
        """What is needed, beside the recipe, to rebuild the networks (saved in checkpoints and bundles)."""
        return {}

    @abstractmethod
    def train_segments(self) -> Segments:
        """Random training segments of the `train` split."""

    @abstractmethod
    def val_segments(self, split: str, whole: bool = False) -> Segments | None:
        """Fixed validation segments of a split, or None when the split is empty; at most
        `train.val_max_segments` of them unless `whole` (evaluate measures them all)."""

    def _val_limit(self, whole: bool) -> int:
        return 0 if whole else self.train_cfg.val_max_segments

    @abstractmethod
    def losses(self, group: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Named scalar losses of one optimizer group for one batch ({} = skip this group now)."""

    @abstractmethod
    def val_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-item validation values [B] by name (NaN where undefined); must include `monitor`."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before every epoch (1-based): fine-tuning's unfreezing schedule lives here."""

    def wrap(self, wrapper) -> None:
        """Let the trainer wrap the networks used in forward passes (DDP); `modules()` stays unwrapped."""
        self.wrapped = {name: wrapper(m) for name, m in self.modules().items()}

    def net(self, name: str) -> nn.Module:
        return self.wrapped[name] if name in self.wrapped else self.modules()[name]


class AcousticTask(Task):
    stage = "acoustic"
    groups = ("model",)
    averaged = ("model",)

    def __init__(self, recipe: Recipe, dataset: Dataset, device: torch.device,
                 speakers: list[str] | None = None, base: AcousticModel | None = None,
                 finetune: FinetuneConfig | None = None, base_source: str = "") -> None:
        """base + finetune: adapt a trained model to the dataset's voice instead of training from scratch."""
        super().__init__(recipe, dataset, device)
        train = dataset.split("train")
        self.speakers = speakers or sorted({train.speaker(i) for i in range(len(train))})
        self.speaker_ids = {s: i for i, s in enumerate(self.speakers)}
        cfg = recipe.acoustic
        self.finetune, self.base_source = finetune, base_source
        if base is not None:
            self.model = copy.deepcopy(base).to(device)
        else:
            self.model = AcousticModel(cfg.model, recipe.audio, len(self.speakers)).to(device)
        self.voice_f0_median: float | None = None
        self.voice_envelope: list[float] | None = None
        if finetune is not None and finetune.learn_speaker and self.model.voice is None:
            mels = [torch.from_numpy(train.mel(i).astype(np.float32).T).to(device) for i in range(min(len(train), 16))]
            self.model.learn_voice(ft.initial_voice(self.model, mels))
            f0 = np.concatenate([train.f0(i) for i in range(len(train))])
            # the voice's register and long-term spectrum, which synthesis moves sources to when no reference
            # is given (inference/timbre.py)
            self.voice_f0_median = A.voiced_median(f0)
            mel = np.concatenate([np.asarray(train.mel(i), np.float32) for i in range(len(train))]).T
            env = timbre.envelope(mel, f0)
            self.voice_envelope = None if env is None else [round(float(v), 5) for v in env]
        self.ref_frames = 2 * cfg.train.segment_frames

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"speakers": self.speakers, "learned_voice": self.model.voice is not None}
        if self.finetune is not None:
            meta["finetuned_from"] = self.base_source
            meta["voice_f0_median"] = self.voice_f0_median
            meta["voice_envelope"] = self.voice_envelope
        return meta

    def param_groups(self) -> dict[str, list[dict[str, Any]]]:
        if self.finetune is not None:
            return {"model": ft.param_groups(self.model, self.finetune)}
        return {"model": [{"params": list(self.model.parameters()), "base_lr": self.train_cfg.lr}]}

    def on_epoch_start(self, epoch: int) -> None:
        if self.finetune is not None:
            ft.apply_schedule(self.model, self.finetune, epoch)

    def train_segments(self) -> Segments:
        train = self.dataset.split("train")
        return Segments(train, self.train_cfg.segment_frames, self.recipe.audio.hop_length, self.train_cfg.seed,
                        train=True, references=reference_pool(train), ref_frames=self.ref_frames,
                        speaker_ids=self.speaker_ids)

    def val_segments(self, split: str, whole: bool = False) -> Segments | None:
        s = self.dataset.split(split)
        if len(s) == 0:
            return None
        # seen speakers' references come from their training utterances too; unseen ones only from their own
        pool = reference_pool(s, self.dataset.split("train")) if split == "val" else reference_pool(s)
        return Segments(s, self.train_cfg.segment_frames, self.recipe.audio.hop_length, self.train_cfg.seed,
                        train=False, references=pool, ref_frames=self.ref_frames, speaker_ids=self.speaker_ids,
                        cover=self.train_cfg.val_segments, limit=self._val_limit(whole))

    def losses(self, group: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        mel, ref = batch["mel"].transpose(1, 2), batch["ref_mel"].transpose(1, 2)  # [B, M, T], [B, M, R]
        f0, energy, mask = batch["f0"], batch["energy"], batch["mask"]
        ref_f0 = batch.get("ref_f0")
        known = batch["speaker"] >= 0
        stage = getattr(self.recipe, self.stage)
        if stage.augment:
            p = stage.perturb
            # virtual speakers: part of the batch gets one warp on target and reference alike (F0 follows)
            b = mel.shape[0]
            warp = torch.rand(b, device=mel.device) < p.virtual_share
            ratio = torch.where(warp, augment.random_ratio(b, p.virtual_semitones, device=mel.device),
                                torch.ones(b, device=mel.device))
            source = augment.perturb_content(mel, self.recipe.audio, perturb=p)
            target = augment.warp_frequency(mel, ratio, self.recipe.audio)
            ref = augment.warp_frequency(ref, ratio, self.recipe.audio)
            f0 = f0 * ratio[:, None]
            ref_f0 = ref_f0 * ratio[:, None] if ref_f0 is not None else None
            known = known & ~warp  # a warped voice is no longer the labelled speaker
        else:
            source, target = mel, mel
        if self.model.voice is not None:
            ref = None  # a fine-tuned voice is its learned vector, not a reference
        pred, speaker = self.net("model")(source, f0, energy, ref, batch["ref_mask"], mask)
        out = {"mel": masked_l1(pred, target, mask).mean()}
        cfg = self.recipe.acoustic.model
        if cfg.speaker_loss == "aam":
            if known.any():
                out["speaker"] = aam_softmax_loss(speaker[known], self.model.classifier.weight,
                                                  batch["speaker"][known], cfg.aam_margin, cfg.aam_scale)
            else:
                out["speaker"] = self.model.classifier.weight.sum() * 0.0
        else:
            logits = self.model.classifier(speaker.float())
            if known.any():
                out["speaker"] = F.cross_entropy(logits[known], batch["speaker"][known])
            else:
                out["speaker"] = logits.sum() * 0.0  # keeps every parameter in the graph (DDP needs that)
        wanted = [name for name in ("consistency", "cycle") if self.weights.get(name, 0.0) > 0]
        if wanted and ref is not None and pred.shape[0] > 1:
            out.update(self._conversion_losses(wanted, source, f0, energy, mask, speaker, ref_f0))
        return out

    def _conversion_losses(self, wanted: list[str], source: Tensor, f0: Tensor, energy: Tensor, mask: Tensor,
                           speaker: Tensor, ref_f0: Tensor | None) -> dict[str, Tensor]:
        """Convert each item's content into the *next* item's voice (register moved as synthesis moves it),
        an output no target exists for, and judge it with the model's own encoders, frozen on this path:

        - "consistency": the speaker encoder must find that voice in it (1 - cosine);
        - "cycle": the content encoder must read the source's content back from it (L1), so the decoder
          keeps the words when it renders a voice other than the source's (CycleGAN-VC's cycle idea,
          without a second conversion).
        """
        model = self.model
        other = torch.roll(speaker, 1, dims=0)
        f0_other = f0
        if ref_f0 is not None:
            log_med = _log_median(f0)
            ratio = torch.exp(torch.roll(_log_median(ref_f0), 1) - log_med)  # [B]
            f0_other = f0 * ratio[:, None]
        content = model.content_encoder(source)
        converted = model.decoder(content, pitch_features(f0_other), energy_features(energy, mask), other)
        out = {}
        if "consistency" in wanted:
            embedded = _frozen_call(model.speaker_encoder, converted, mask)
            out["consistency"] = (1 - F.cosine_similarity(embedded.float(), other.detach().float(), dim=1)).mean()
        if "cycle" in wanted:
            out["cycle"] = masked_l1(_frozen_call(model.content_encoder, converted), content.detach(), mask).mean()
        return out

    @torch.no_grad()
    def val_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mel = batch["mel"].transpose(1, 2)
        ref = None if self.model.voice is not None else batch["ref_mel"].transpose(1, 2)
        pred, _ = self.model(mel, batch["f0"], batch["energy"], ref, batch["ref_mask"], batch["mask"])
        return {"mel": masked_l1(pred, mel, batch["mask"])}


class VocoderTask(Task):
    """GAN vocoder: the discriminators step first on each batch, then the generator."""

    stage = "vocoder"
    groups = ("discriminator", "generator")
    averaged = ("generator",)

    def __init__(self, recipe: Recipe, dataset: Dataset, device: torch.device,
                 acoustic: AcousticModel | None = None, base: Vocoder | None = None,
                 finetune: FinetuneConfig | None = None, base_source: str = "") -> None:
        super().__init__(recipe, dataset, device)
        cfg = recipe.vocoder
        self.generator = (copy.deepcopy(base) if base is not None else Vocoder(cfg.model, recipe.audio)).to(device)
        self.finetune, self.base_source = finetune, base_source
        self.discriminators = Discriminators(cfg.model).to(device)
        self.acoustic = acoustic.eval().requires_grad_(False) if acoustic is not None else None
        self.val_frames = max(cfg.train.segment_frames, 128)  # F0 needs a few voiced syllables to be measured

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminators": self.discriminators}

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"finetuned_on_acoustic": self.acoustic is not None}
        if self.finetune is not None:
            meta["finetuned_from"] = self.base_source
        return meta

    def param_groups(self) -> dict[str, list[dict[str, Any]]]:
        gen_lr = self.finetune.lr if self.finetune is not None else self.train_cfg.lr
        return {"discriminator": [{"params": list(self.discriminators.parameters()),
                                   "base_lr": self.recipe.vocoder.gan.disc_lr}],
                "generator": [{"params": list(self.generator.parameters()), "base_lr": gen_lr}]}

    def _segments(self, split: str, frames: int, train: bool, limit: int = 0) -> Segments | None:
        s = self.dataset.split(split)
        if len(s) == 0:
            return None
        refs = reference_pool(s, self.dataset.split("train")) if self.acoustic is not None else None
        return Segments(s, frames, self.recipe.audio.hop_length, self.train_cfg.seed, train=train,
                        references=refs, ref_frames=2 * frames if refs else 0, with_audio=True,
                        cover=0 if train else self.train_cfg.val_segments, limit=limit)

    def train_segments(self) -> Segments:
        return self._segments("train", self.train_cfg.segment_frames, True)

    def val_segments(self, split: str, whole: bool = False) -> Segments | None:
        return self._segments(split, self.val_frames, False, self._val_limit(whole))

    def _input_mel(self, batch: dict[str, Tensor]) -> Tensor:
        mel = batch["mel"].transpose(1, 2)
        if self.acoustic is None:
            return mel
        with torch.no_grad():  # the acoustic model's own output for this very segment: time-aligned
            pred, _ = self.acoustic(mel, batch["f0"], batch["energy"], batch["ref_mel"].transpose(1, 2),
                                    batch["ref_mask"], batch["mask"])
        return pred.float()

    def _generated(self, batch: dict[str, Tensor]) -> Tensor:
        """The generator's waveform for this batch [B, T], computed by whichever group asks first and kept in
        the batch: the discriminators judge the very output the generator is then scored on, whatever the
        order of the groups."""
        if GENERATED not in batch:
            batch[GENERATED] = self.net("generator")(self._input_mel(batch), batch["f0"])
        return batch[GENERATED]

    def _adversarial(self, step: int) -> bool:
        return step > self.recipe.vocoder.gan.mel_only_steps

    def losses(self, group: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        real, fake = batch["audio"], self._generated(batch)
        if group == "discriminator":
            if not self._adversarial(step):
                return {}
            logits, _ = self.net("discriminators")(torch.cat([real, fake.detach()]))
            half = real.shape[0]
            return {"discriminator": discriminator_loss([x[:half] for x in logits], [x[half:] for x in logits])}
        out = {"mel": masked_l1(A.log_mel(fake, self.recipe.audio), A.log_mel(real, self.recipe.audio),
                                batch["mask"]).mean()}
        if self._adversarial(step):
            half = real.shape[0]
            logits, feats = self.net("discriminators")(torch.cat([real, fake]))
            out["adversarial"] = generator_adversarial_loss([x[half:] for x in logits])
            out["feature"] = feature_matching_loss([[f[:half].detach() for f in fs] for fs in feats],
                                                   [[f[half:] for f in fs] for fs in feats])
        return out

    @torch.no_grad()
    def val_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        fake = self.generator(self._input_mel(batch), batch["f0"]).float()
        cfg = self.recipe.audio
        mel = masked_l1(A.log_mel(fake, cfg), A.log_mel(batch["audio"], cfg), batch["mask"])
        cents = []
        for given, wav in zip(batch["f0"].cpu().numpy(), fake.cpu().numpy()):
            m = metrics.f0_metrics(given, A.f0(wav, cfg))
            cents.append(np.nan if m["rmse_cents"] is None else m["rmse_cents"])
        return {"mel": mel, "f0_rmse_cents": torch.tensor(cents, dtype=torch.float32, device=mel.device)}


def make_task(stage: str, recipe: Recipe, dataset: Dataset, device: torch.device, **kwargs) -> Task:
    tasks = {"acoustic": AcousticTask, "vocoder": VocoderTask}
    return tasks[stage](recipe, dataset, device, **kwargs)
