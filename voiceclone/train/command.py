"""`voiceclone train`: dataset and run-folder checks, then one Trainer per stage."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console

from voiceclone import run as R
from voiceclone.config import Recipe, differences, load_recipe, recipe_from_dict
from voiceclone.data.store import Dataset
from voiceclone.errors import TrainingFailed, UserError, check_output, stderr_console
from voiceclone.inference.bundle import BEST_KEYS, Model, check_meta, load_model
from voiceclone.stages.tasks import make_task
from voiceclone.stages import finetune as ft
from voiceclone.threads import CpuSample, ThreadGovernor, allowed_cores, choose_threads, explicit_threads
from voiceclone.train import tboard
from voiceclone.train.beside import Beside
from voiceclone.train.distributed import Distributed, setup_distributed
from voiceclone.train.loop import Trainer

# seconds of the machine's CPU use judged before `--stage all` chooses to train side by side: a glance of 50 ms
# at a neighbour's burst is not what the next minutes hold
DECIDE_WINDOW = 1.0


def resolve_recipe(dataset: Dataset, recipe: str | None, overrides: Sequence[str]) -> Recipe:
    """The dataset's own recipe unless one is named; its audio settings must match the dataset's."""
    r = load_recipe(recipe, overrides) if recipe else recipe_from_dict(dataset.recipe.to_dict(), overrides)
    diff = differences(dataset.audio, r.audio, "audio")
    if diff:
        raise UserError(f"{dataset.path}: prepared with a different audio config than recipe '{r.name}' "
                        f"({'; '.join(diff)}); prepare it again with this recipe, or train without --recipe")
    return r


def check_splits(dataset: Dataset, stage: str, need_unseen: bool) -> None:
    train = dataset.split("train")
    if len(train) == 0:
        raise UserError(f"{dataset.path}: the train split is empty")
    if stage == "acoustic" and need_unseen:
        speakers = {train.speaker(i) for i in range(len(train))}
        if len(speakers) < 2:
            raise UserError(f"{dataset.path}: {len(speakers)} training speaker(s); the zero-shot model needs at "
                            "least 2 (to adapt a trained model to one voice, or resume such a fine-tune: --finetune "
                            "--init-from MODEL)")
        if len(dataset.split("unseen")) < 2:
            prep = dataset.recipe.prepare
            how = ("it was prepared with prepare.unseen_fraction = 0 and no --unseen-speakers; prepare it again "
                   "with a fraction above 0 or name some with --unseen-speakers"
                   if prep.unseen_fraction == 0 and not prep.unseen_speakers else
                   "prepare with at least 3 speakers or name some with --unseen-speakers")
            raise UserError(f"{dataset.path}: too few unseen-speaker utterances for speaker-disjoint validation; "
                            + how)
    if len(dataset.split("val")) + len(dataset.split("unseen")) == 0:
        raise UserError(f"{dataset.path}: no validation utterances (val and unseen are empty)")


@dataclass(frozen=True)
class TrainRequest:
    """What `voiceclone train` was asked, resolved once and shared by every stage it trains."""

    data: Path
    run: Path
    recipe: Recipe  # resolved: the dataset's or the named one, or the base model's when fine-tuning
    recipe_arg: str | None  # as given, for the resume command
    overrides: Sequence[str]
    epochs: int | None
    resume: bool
    early_stop: bool | None
    finetune_on_acoustic: bool
    device: torch.device
    dist: Distributed
    console: Console
    base: Model | None = None  # the model being fine-tuned
    init_from: Path | None = None
    tensorboard: bool = False  # also write TensorBoard scalars beside each stage's history
    threads: int | None = None  # 0: voiceclone.threads chooses, again after every epoch; None: left alone
    lent: Callable[[], int] | None = None  # threads lent to the vocoder's worker process now (`--stage all`)
    threads_arg: int = 0  # --threads as given, for the resume command (`threads` changes for the worker)

    @property
    def finetuning(self) -> bool:
        return self.base is not None

    def resume_command(self, stage: str) -> str:
        """The command line that continues `stage` where it stopped."""
        argv = ["voiceclone", "train", "--data", str(self.data), "--run", str(self.run), "--stage", stage, "--resume"]
        if self.recipe_arg:
            argv += ["--recipe", self.recipe_arg]
        if self.finetuning:
            argv += ["--init-from", str(self.init_from), "--finetune"]
        if self.finetune_on_acoustic and stage != "acoustic":
            argv.append("--finetune-on-acoustic")
        for o in self.overrides:
            argv += ["--set", o]
        if self.epochs:
            argv += ["--epochs", str(self.epochs)]
        if self.threads_arg:  # an exact resume needs the same thread count (floating-point sums differ)
            argv += ["--threads", str(self.threads_arg)]
        return shlex.join(argv)


def train(data: Path, run: Path, stage: str = "acoustic", recipe: str | None = None,
          overrides: Sequence[str] = (), epochs: int | None = None, resume: bool = False,
          device: str | None = None, early_stop: bool | None = None, finetune_on_acoustic: bool = False,
          init_from: Path | None = None, finetune: bool = False,
          console: Console | None = None, tensorboard: bool = False,
          threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Train one stage or both ('all': acoustic, then vocoder; on a CPU, with `threads` not None and two or more
    to use, side by side, the vocoder in a spawned process (_VocoderWorker): a script that calls this needs
    the `if __name__ == "__main__":` guard that multiprocessing's spawn asks for). Returns each stage's result.

    With `finetune`, `init_from` (a run folder or bundle) is adapted to the dataset's voice using the
    recipe's [finetune] settings; its architecture and audio settings are the base model's. threads: torch's
    intra-op threads, 0 = chosen again after every epoch from the cores other processes leave free, None =
    left as they are.
    """
    console = console or stderr_console()
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own test
        raise UserError("voiceclone's train() was called while a spawned process re-imported the script that "
                        "calls it: put that call under `if __name__ == \"__main__\":` (train --stage all on a "
                        "CPU trains the vocoder in a spawned process)")
    if stage not in (*R.STAGES, "all"):
        raise UserError(f"--stage {stage!r}: expected acoustic, vocoder or all")
    if finetune and init_from is None:
        raise UserError("--finetune needs --init-from MODEL (a run folder or a .safetensors bundle)")
    if init_from is not None and not finetune:
        raise UserError("--init-from starts a fine-tune: add --finetune (other training starts from scratch, "
                        "or continues a run with --resume)")
    if finetune and recipe is not None:
        # a fine-tune is built from its base's recipe: a named one was silently ignored, its [finetune] too
        raise UserError(f"--recipe {recipe}: a fine-tune keeps the recipe of its --init-from model; change its "
                        "settings with --set finetune.KEY=VALUE")
    if tensorboard:
        tboard.require()
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: must be at least 1 (leave it out for the recipe's)")
    since = CpuSample.now()  # the free cores for `--stage all` are judged from here
    check_output(run, folder=True)
    dataset = Dataset.open(data)
    base = None
    if finetune:
        base = load_model(init_from, need_vocoder=stage != "acoustic")
        base_recipe = recipe_from_dict(base.recipe.to_dict(), overrides, source=str(init_from))
        diff = differences(dataset.audio, base_recipe.audio, "audio")
        if diff:
            raise UserError(f"{init_from}: the base model's audio config differs from {dataset.path}'s "
                            f"({'; '.join(diff[:3])}); prepare the voice's data with the base model's recipe")
        ft.check(base_recipe.finetune, trains_acoustic=stage != "vocoder", learned_voice=base.acoustic.voice is not None)
    else:
        base_recipe = resolve_recipe(dataset, recipe, overrides)
    dist_info, dev = setup_distributed(device)
    if finetune and dist_info.world > 1:
        raise UserError("fine-tuning runs on one device; start it without torchrun")
    request = TrainRequest(Path(data), Path(run), base_recipe, recipe, tuple(overrides), epochs, resume, early_stop,
                           finetune_on_acoustic, dev, dist_info, console, base, init_from, tensorboard, threads,
                           threads_arg=threads or 0)
    results: dict[str, dict[str, Any]] = {}
    with R.locked(run) if dist_info.main else contextlib.nullcontext():
        worker = _VocoderWorker.plan(request, dataset, since) if stage == "all" else None
        checked: dict[str, Checked] = {}
        if stage == "all" and worker is None:
            # one after the other (a GPU, torchrun, a fine-tune, one thread): both stages are checked first here
            # too, or a setting the vocoder refuses stopped the command only after the whole acoustic training
            checked["acoustic"] = _check_stage(request, dataset, "acoustic")
            _check_stage(dataclasses.replace(request, console=Console(quiet=True)), dataset, "vocoder")
        todo = list(R.STAGES if stage == "all" else (stage,))
        if worker is not None:
            todo = _train_beside(request, dataset, worker, results)
        for s in todo:
            results[s] = _train_stage(request, dataset, s, checked.get(s))
            if results[s]["interrupted"]:
                break
            _check_finite(results[s], request.finetuning)
        if stage == "all" and results["acoustic"]["interrupted"] and "vocoder" not in results:
            console.print(f"The vocoder has not started; resume both with:\n  {request.resume_command('all')}",
                          highlight=False, soft_wrap=True)
        if finetune and stage == "acoustic" and base.vocoder is not None and dist_info.main:
            _adopt_base_vocoder(Path(run), base, init_from)
    return results


def _train_beside(req: TrainRequest, dataset: Dataset, worker: "_VocoderWorker",
                  results: dict[str, dict[str, Any]]) -> list[str]:
    """`--stage all` with the vocoder in `worker`'s process, from when it starts; returns the stages left to
    train here: the vocoder, when the acoustic model finished before two cores were ever free."""
    with worker:  # a worker still running on the way out is stopped, and waited for while it saves
        results["acoustic"] = _train_stage(dataclasses.replace(req, lent=worker.lent), dataset, "acoustic",
                                           worker.checked)
        stopped = results["acoustic"]["interrupted"]
        if not stopped:
            _check_finite(results["acoustic"])
        if worker.beside is None:
            return [] if stopped else ["vocoder"]
        if stopped:
            worker.beside.stop()  # the Ctrl-C reached this process alone: the vocoder saves and stops too
        results["vocoder"] = worker.beside.result() or {"stage": "vocoder", "interrupted": True, "epochs": 0}
    if stopped and results["vocoder"]["interrupted"]:
        req.console.print(f"Both stopped; resume both with:\n  {req.resume_command('all')}", highlight=False,
                          soft_wrap=True)
    elif not results["vocoder"]["interrupted"]:
        _check_finite(results["vocoder"])
    return []


def _check_finite(result: dict[str, Any], finetuning: bool = False) -> None:
    s, epochs = result["stage"], result["epochs"]
    # a fine-tune trains at finetune.lr: the advice named {s}.train.lr, which it ignores
    key = "finetune.lr" if finetuning else f"{s}.train.lr"
    if epochs > 0 and not math.isfinite(result["best_value"]):
        raise TrainingFailed(f"{s} diverged: no epoch of {epochs} had a finite validation loss, so there is no "
                             f"best model; lower the learning rate (--set {key}=...) and start a new --run")


class _VocoderWorker:
    """The vocoder of `--stage all` on a CPU, trained in a process of its own beside the acoustic model
    (train/beside.py says why), each with half the threads; this process's thread governor takes the
    vocoder's back when it ends (TrainRequest.lent). The worker starts at once when two cores are free.
    When other processes hold them, it starts after the first acoustic epoch that leaves two free (`lent`,
    asked after every epoch), or never, and the vocoder then trains after the acoustic model in this process:
    a neighbour busy for the first second no longer decides the whole run."""

    def __init__(self, req: TrainRequest, checked: Checked) -> None:
        self.req, self.checked = req, checked
        self.beside: Beside | None = None
        self.since = CpuSample.now()

    @classmethod
    def plan(cls, req: TrainRequest, dataset: Dataset, since: CpuSample) -> "_VocoderWorker | None":
        """Both stages are checked here first, so a bad setting stops the command before any training. None:
        train one after the other (a GPU, torchrun, a fine-tune, a vocoder trained on the acoustic model's
        outputs, one thread asked for or one core allowed). since: when the command started; the free cores
        are judged over at least DECIDE_WINDOW from then."""
        if (req.device.type != "cpu" or req.dist.world > 1 or req.finetuning or req.finetune_on_acoustic
                or req.threads is None or (explicit_threads(req.threads) or allowed_cores()) < 2):
            return None
        checked = _check_stage(req, dataset, "acoustic")
        # the vocoder's refusals come here, before any work; the worker checks again (its resume state is a
        # checkpoint, not worth sending through a pipe) and prints what it finds
        _check_stage(dataclasses.replace(req, console=Console(quiet=True)), dataset, "vocoder")
        worker = cls(req, checked)
        if not explicit_threads(req.threads):  # a count the user fixed is not measured
            time.sleep(max(0.0, DECIDE_WINDOW - (time.monotonic() - since.at)))
        threads = choose_threads(req.threads, since)
        if threads >= 2:
            worker.start(threads)
        else:
            req.console.print("vocoder: other processes are using the cores; it starts beside the acoustic model "
                              "once two are free, or after it", highlight=False)
        return worker

    def start(self, threads: int) -> None:
        n = threads // 2
        torch.set_num_threads(threads - n)
        self.req.console.print(f"vocoder: training beside the acoustic model in a second process ({n} of {threads} "
                               "threads)", highlight=False)
        # chosen by the worker's own governor unless the user fixed the count: it takes the second core when
        # the acoustic model ends first
        fixed = bool(explicit_threads(self.req.threads))
        # its resume commands name the worker's own count: the vocoder resumed alone with the whole --threads
        # summed its floats otherwise, and went on from the stop as another model
        worker_req = dataclasses.replace(self.req, console=None, lent=None, threads=n if fixed else 0,
                                         threads_arg=n if fixed else self.req.threads_arg)
        self.beside = Beside("vocoder", _train_vocoder_worker, (worker_req,), n, self.req.console,
                             resume=worker_req.resume_command("vocoder"))

    def lent(self) -> int:
        """Threads the worker holds now (asked after every acoustic epoch); a worker not yet started starts
        when the epoch left two cores free."""
        if self.beside is None:
            threads = choose_threads(self.req.threads, self.since)
            self.since = CpuSample.now()
            if threads >= 2:
                self.start(threads)
        return self.beside.threads if self.beside is not None and self.beside.running else 0

    def __enter__(self) -> "_VocoderWorker":
        return self

    def __exit__(self, *exc) -> None:
        if self.beside is not None:
            self.beside.close()


def _train_vocoder_worker(req: TrainRequest, console: Console) -> dict[str, Any]:
    """The vocoder stage in the worker process that `_VocoderWorker.start` starts."""
    return _train_stage(dataclasses.replace(req, console=console), Dataset.open(req.data), "vocoder")


def _from_base(best: Path) -> bool:
    """Whether a run's best vocoder is the one a fine-tune adopted from its base."""
    meta = R.load_checkpoint(best, keys=("meta",))["meta"]
    return bool(meta.get("from_base")) if isinstance(meta, dict) else False


def _adopt_base_vocoder(run: Path, base: Model, init_from: Path) -> None:
    """A fine-tune of the acoustic model alone speaks through its base's vocoder: copied into the run (so
    evaluate, synthesize and export find it), marked as the base's."""
    path = R.best_path(run, "vocoder")
    if path.is_file() and not _from_base(path):
        return  # a vocoder of this run's own: keep it
    R.save_atomic({"format": 1, "stage": "vocoder", "recipe": base.recipe.to_dict(),
                   "meta": {"from_base": str(init_from)}, "epoch": 0, "value": math.nan,
                   "modules": {"generator": base.vocoder.state_dict()}}, path)


def _finetune_recipe(recipe: Recipe, stage: str) -> Recipe:
    """The stage's training settings for fine-tuning: the [finetune] rate and epochs, a short warmup."""
    f = recipe.finetune
    stage_cfg = getattr(recipe, stage)
    train_cfg = dataclasses.replace(stage_cfg.train, lr=f.lr, epochs=f.epochs,
                                    warmup_steps=min(stage_cfg.train.warmup_steps, 10))
    return dataclasses.replace(recipe, **{stage: dataclasses.replace(stage_cfg, train=train_cfg)})


RESUME_KEYS = ("recipe", "progress", "modules", "optimizers", "rng", "meta")


def _resume_state(req: TrainRequest, dataset: Dataset, stage: str, recipe: Recipe) -> dict[str, Any] | None:
    """The stage's last checkpoint when resuming (its fixed settings and speakers must match), None for a
    fresh start. Never a fresh start over a best model or a history: that would replace them unasked."""
    last, best, folder = R.last_path(req.run, stage), R.best_path(req.run, stage), R.stage_dir(req.run, stage)
    # the base's vocoder, adopted by a fine-tune: not trained here, so a vocoder trained here starts fresh and
    # its first best replaces it; kept till then, or a stop or failure before that left the run unable to speak
    adopted = (stage == "vocoder" and best.is_file() and not last.is_file() and not R.has_history(folder)
               and _from_base(best))
    if req.resume and not last.is_file() and ((best.is_file() and not adopted) or R.has_history(folder)):
        raise UserError(f"{last}: missing, so the run cannot be resumed from where it stopped; {best.name} is "
                        "kept; start a new --run (optionally --init-from this one with --finetune)")
    if req.resume and last.is_file():
        state = R.load_checkpoint(last, req.device, keys=RESUME_KEYS)
        wrong = [k for k in RESUME_KEYS if not isinstance(state[k], dict)]
        if wrong:
            raise UserError(f"{last}: not a voiceclone resume checkpoint ({', '.join(wrong)} not a mapping)")
        if best.is_file():
            # a best.pt cut short (a run folder copied in part) was kept while no new epoch beat it, and the run
            # said its best model was in it
            try:
                R.load_checkpoint(best, keys=BEST_KEYS)
            except UserError as e:
                raise UserError(f"{e}; it holds this run's best model: restore it before resuming") from None
        elif isinstance(state["progress"].get("best_epoch"), int) and state["progress"]["best_epoch"] > 0:
            # gone (deleted, or a copy without it): the run said its best epoch was in it while no later epoch
            # beat that one's loss, and the run then had no model to synthesize with
            held = f"{best}: missing (it held epoch {state['progress']['best_epoch']})"
            if (req.epochs or getattr(recipe, stage).train.epochs) <= state["progress"].get("epoch", 0):
                raise UserError(f"{held}; restore it, or resume with a larger --epochs so that a new one is saved")
            req.console.print(f"{held}; the next epoch's model becomes the best", style="yellow", highlight=False)
            state["progress"] = {**state["progress"], "best_value": math.inf, "best_epoch": 0}
        check_meta(state["meta"], str(last), acoustic=stage == "acoustic")
        base = state["meta"].get("finetuned_from")
        if base and not req.finetuning:
            # without them a fine-tuned vocoder trained on as a new model: the recipe's rate and epochs, and its
            # checkpoints no longer said whose fine-tune they are
            raise UserError(f"{last}: a fine-tune of {base}; resume it with --init-from {base} --finetune")
        if req.finetuning and not base:
            raise UserError(f"{last}: not a fine-tune; resume it without --init-from and --finetune")
        was = bool(state["meta"].get("finetuned_on_acoustic", False))
        if stage == "vocoder" and was != req.finetune_on_acoustic:
            # its best validation loss was measured on other input mels: the new epochs could never beat it,
            # so best.pt would silently stay the old model
            raise UserError(f"{last}: trained {'on the acoustic model outputs' if was else 'on dataset mels'}; "
                            f"resume it {'with' if was else 'without'} --finetune-on-acoustic, or start a new --run")
        if state.get("dataset"):  # checkpoints from before datasets were recorded have none
            changes = R.speaker_changes(state["dataset"], dataset)
            if changes:
                raise UserError(f"{last}: trained on other speakers than {dataset.path} now holds "
                                f"({'; '.join(changes)}); resume with the dataset it was trained on, or start a "
                                "new --run")
            if state["dataset"].get("fingerprint") != dataset.fingerprint and req.dist.main:
                req.console.print(f"[yellow]{dataset.path} changed since the checkpoint (fingerprint "
                                  f"{state['dataset'].get('fingerprint')} -> {dataset.fingerprint}); same speakers, "
                                  "so training continues on the new utterances[/]", highlight=False)
        saved = recipe_from_dict(state["recipe"], source=str(last))
        diff = [d for key in ("audio", stage) for d in differences(getattr(saved, key), getattr(recipe, key), key)
                if not d.startswith(f"{stage}.train.")]
        if diff:
            raise UserError(f"{last}: the run was made with other settings ({'; '.join(diff[:4])}); "
                            "resume without changing them, or start a new --run")
        return state
    found = [p.name for p in (last, best, R.history_path(req.run, stage))
             if p.is_file() and not (p == best and adopted)]
    if found and not req.resume:
        raise UserError(f"{folder}: a run is already here ({', '.join(found)}); continue it with --resume or "
                        "choose another --run")
    return None


def _check_other_stage(req: TrainRequest, dataset: Dataset, stage: str, recipe: Recipe) -> None:
    """Refuse to train a stage for other audio settings than the run's other trained stage has: the two
    speak to each other through the mel, so the run could neither synthesize nor be evaluated, and that
    showed only after the whole training."""
    other = "vocoder" if stage == "acoustic" else "acoustic"
    best = R.best_path(req.run, other)
    if not best.is_file():
        return
    saved = recipe_from_dict(R.load_checkpoint(best, keys=("recipe",))["recipe"], source=str(best))
    diff = differences(saved.audio, recipe.audio, "audio")
    if diff:
        raise UserError(f"{best}: this run's {other} model has other audio settings than {dataset.path} "
                        f"({'; '.join(diff[:4])}); the two could not work together: train the {stage} in a "
                        "new --run")


def _task_kwargs(req: TrainRequest, stage: str, recipe: Recipe, state: dict[str, Any] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if req.finetuning:
        kwargs.update(finetune=recipe.finetune, base_source=str(req.init_from),
                      base=req.base.acoustic if stage == "acoustic" else req.base.vocoder)
        if stage == "acoustic":
            kwargs["speakers"] = req.base.meta["acoustic"].get("speakers", [])
    if stage == "acoustic" and state is not None:
        kwargs["speakers"] = state["meta"]["speakers"]
    if stage == "vocoder" and req.finetune_on_acoustic:
        kwargs["acoustic"] = load_model(req.run, need_vocoder=False, device=req.device).acoustic
    return kwargs


Checked = tuple[Recipe, "dict[str, Any] | None"]  # a stage's recipe and its resume state, None: a fresh start


def _check_stage(req: TrainRequest, dataset: Dataset, stage: str) -> Checked:
    """Everything that can refuse a stage before it trains: splits, the other stage's audio settings, resume."""
    recipe = _finetune_recipe(req.recipe, stage) if req.finetuning else req.recipe
    check_splits(dataset, stage, need_unseen=not req.finetuning)
    _check_segment_length(dataset, stage, recipe)
    _check_other_stage(req, dataset, stage, recipe)
    return recipe, _resume_state(req, dataset, stage, recipe)


def _check_segment_length(dataset: Dataset, stage: str, recipe: Recipe) -> None:
    """A training segment longer than twice the longest utterance is mostly padding, and its memory grows with
    it: vocoder.train.segment_frames = 8192 (131 s on 6 s clips) had the process killed for want of memory."""
    frames = getattr(recipe, stage).train.segment_frames
    train = dataset.split("train")
    longest = max(train.n_frames(i) for i in range(len(train)))
    if frames > 2 * longest:
        rate = recipe.audio.frame_rate
        raise UserError(f"{stage}.train.segment_frames = {frames} ({frames / rate:.1f} s) is over twice the longest "
                        f"training utterance of {dataset.path} ({longest} frames, {longest / rate:.1f} s): its "
                        f"segments would be mostly padding; use at most {longest}")


def _train_stage(req: TrainRequest, dataset: Dataset, stage: str, checked: Checked | None = None) -> dict[str, Any]:
    recipe, state = checked or _check_stage(req, dataset, stage)
    if req.dist.main:
        R.write_stage_config(req.run, stage, recipe.to_json())
        R.remove_stale_temporaries(req.run, stage)
    torch.manual_seed(getattr(recipe, stage).train.seed)
    task = make_task(stage, recipe, dataset, req.device, **_task_kwargs(req, stage, recipe, state))
    early_stop = recipe.convergence.early_stop if req.early_stop is None else req.early_stop
    trainer = Trainer(task, R.stage_dir(req.run, stage), req.epochs or getattr(recipe, stage).train.epochs,
                      early_stop, req.dist, req.console, req.resume_command(stage),
                      threads=ThreadGovernor(req.threads, req.lent) if req.threads is not None else None)
    if req.tensorboard and req.dist.main:
        trainer.scalars = tboard.Scalars(R.stage_dir(req.run, stage), stage)
    if state is not None:
        try:
            trainer.resume(state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            # the keys are there, what they hold is not what this run saves (shapes, counters, RNG state)
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise UserError(f"{R.last_path(req.run, stage)}: not a voiceclone resume checkpoint for this run "
                            f"({first[:200]})") from None
        if req.dist.main:
            req.console.print(f"Resuming {stage} from epoch {trainer.progress.epoch}, step {trainer.progress.step}.")
            if trainer.progress.epoch >= trainer.epochs:  # stopped mid-epoch too: that epoch is not trained on
                asked = f"--epochs {req.epochs}" if req.epochs else f"the recipe's {stage}.train.epochs"
                part = " and part of the next" if trainer.progress.batch_in_epoch else ""
                req.console.print(f"{stage}: {trainer.progress.epoch} epochs{part} are trained already, and {asked} "
                                  f"asks for {trainer.epochs}: nothing to train; give a larger --epochs to go on.",
                                  highlight=False)
    baseline = None
    if req.finetuning and state is None and trainer.val_data["val"] is not None:
        task.on_epoch_start(1)
        baseline = trainer.validate("val")
        if not math.isfinite(baseline[task.monitor]):
            # finite weights of 1e30 (or such a learned voice) load; training from them only diverged, and the
            # advice was to lower the learning rate
            raise UserError(f"{req.base.source}: the base model's held-out {stage} loss is {baseline[task.monitor]} "
                            "before any fine-tuning: its weights hold absurd values")
    result = trainer.fit()
    if baseline is not None:
        result["baseline_val_loss"] = baseline[task.monitor]
        if req.dist.main:
            req.console.print(f"{stage}: held-out loss of the base model {baseline[task.monitor]:.4f} -> "
                              f"fine-tuned {result['best_value']:.4f} (epoch {result['best_epoch']})", highlight=False)
    return result
