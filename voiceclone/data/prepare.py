"""`voiceclone prepare`: folders or manifests of recordings -> a feature dataset (the format of store.py).

Per file, in a process pool: decode, mix to mono, resample, trim, split long files at quiet points, normalize
each piece's loudness (all through voiceclone.audio, the code path `synthesize` uses), then log-mel, F0,
energy and the audio itself. The parent writes each file's features once, straight into the dataset's
append-only feature store (store.FeatureStore), whose journal says which files it holds: an interrupted
run resumes where it stopped, and a finished dataset's store is appended to by the next run, which only
processes new or changed files. Splits are an index into the store, drawn from stable hashes (see
`assign_splits`) once every file is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from voiceclone import __version__
from voiceclone import audio as A
from voiceclone.config import Recipe, differences, load_recipe, recipe_from_dict
from voiceclone.data import store
from voiceclone.data.store import FEATURES, SPLITS, Dataset, FeatureStore
from voiceclone.data.discover import Source, discover, skip_record, speaker_name
from voiceclone.data.splits import assign_splits, check_unseen_speakers, split_settings
from voiceclone.data.summary import print_summary, summary_of, warn_single_utterance_speakers, warn_untrainable
from voiceclone.data.worker import FEATURES_VERSION, PREPARE_KEYS, FileState, features_hash, init_worker, process_file
from voiceclone.errors import (DISK_FULL, FileWriteError, UserError, check_output, file_error, stderr_console,
                               writing)
from voiceclone.files import flocked, fsync_dir, stored_config
from voiceclone.threads import allowed_cores, check_count

STORE_DIR, LOCK_FILE, TMP_PREFIX = ".prepare-store", ".prepare-lock", ".prepare-tmp-"
COMMIT_FILE = ".prepare-commit.json"  # what a commit under way makes: its recipe, split settings and splits
COMPACT_WASTE = 0.5  # rewrite the store when more than this share of its frames belongs to no utterance
NO_USABLE = "no usable audio"
STOP_POLL = 0.2  # seconds between looks for a stop asked (Ctrl-C, SIGTERM) while the workers compute
DIED = "the process decoding it died (killed by the system: out of memory?)"  # a skip that says nothing of the file


def recipe_for(out: Path | str, name: str | None, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe `prepare` runs with: the one named; else the one the dataset at `out` was prepared with, so
    running again to add files keeps its settings (it used to fall back to the demo's and rebuild a 22 kHz
    dataset at 16 kHz); else the demo's. `overrides` (--set) apply on top of either."""
    if name is None:
        # no dataset there, or a damaged one (which prepare rebuilds): the demo's
        config = stored_config(Path(out), store.FORMAT)
        source = Path(out) / (store.CONFIG if config is not None else COMMIT_FILE)
        stored = (config or _interrupted_commit(Path(out)) or {}).get("recipe")
        if isinstance(stored, dict):
            try:
                return recipe_from_dict(stored, overrides, source=str(source))
            except UserError as e:
                if overrides:  # the bad value may be the user's own, which the message names
                    raise
                raise UserError(f"{e}; name the recipe to prepare with (--recipe)") from None
        name = "demo"
    return load_recipe(name, overrides)


def prepare(inputs: Sequence[Path | str], out: Path | str, cfg: Recipe, workers: int = 0,
            unseen_speakers: Sequence[str] | None = None, strict: bool = False,
            console: Console | None = None) -> dict[str, Any]:
    """Build (or update) the dataset at `out` from `inputs`; returns the summary printed as a table.

    workers: processes (0 = the cores this process may use; 1 = no pool). unseen_speakers: hold out exactly
    these speakers (overrides the recipe's prepare.unseen_speakers and unseen_fraction). strict: stop with a
    UserError at the first bad file instead of skipping it.
    """
    check_count(workers, "workers")
    started = time.perf_counter()
    console = console or stderr_console()
    out = Path(out)
    # named as the inputs' speakers are (discover): "café" typed in one spelling names folders in either
    named = tuple(speaker_name(s) for s in (unseen_speakers or cfg.prepare.unseen_speakers))
    cfg = dataclasses.replace(cfg, prepare=dataclasses.replace(cfg.prepare, unseen_speakers=named))
    _check_out(out)
    sources, pre_skipped, ignored = discover(inputs, exclude=out)
    # a mistyped name was refused only once every file had been decoded, hours into a large corpus; a speaker
    # found here whose files all turn out unusable is still refused then, by assign_splits
    check_unseen_speakers(named, sorted({s.speaker for s in sources}))
    if strict and pre_skipped:
        raise UserError(_skip_line(pre_skipped[0]))
    fhash, splits_cfg = features_hash(cfg), split_settings(cfg.prepare)
    digest = hashlib.sha256(json.dumps([[dataclasses.astuple(s) for s in sources], pre_skipped, fhash, splits_cfg,
                                        store.FORMAT_VERSION]).encode()).hexdigest()[:16]
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    job = _Job(out, cfg, sources, pre_skipped, ignored, fhash, splits_cfg, digest, workers, strict, console, started)
    try:
        with _terminate_as_interrupt():
            summary = _prepare_locked(job)
    except (OSError, FileWriteError) as e:
        if e.errno not in DISK_FULL:
            raise
        # what is left cannot be finished without space, and keeps the disk full: remove it, and say so
        shutil.rmtree(out / STORE_DIR, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        message = str(e) if isinstance(e, FileWriteError) else str(file_error(e, e.filename or out))
        raise UserError(f"{message} (the unfinished dataset's files were removed to free the space)") from None
    except UserError as e:
        if created and str(e).startswith(NO_USABLE):  # nothing worth resuming: leave no folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops prepare as Ctrl-C does: the pool is shut down and the lock released, the work kept."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class _Job:
    """One `prepare` call, resolved: where, with which settings, from which inputs."""

    out: Path
    cfg: Recipe
    sources: list[Source]
    pre_skipped: list[dict]  # skipped before decoding (manifest rows, duplicate ids)
    ignored: Counter  # non-audio files by extension
    fhash: str  # features_hash(cfg)
    splits_cfg: dict[str, Any]  # split_settings(cfg.prepare)
    digest: str  # of the inputs and settings: the same digest means the dataset is up to date
    workers: int
    strict: bool
    console: Console
    started: float


def _prepare_locked(job: _Job) -> dict[str, Any]:
    out, cfg, sources, pre_skipped, fhash = job.out, job.cfg, job.sources, job.pre_skipped, job.fhash
    console, started = job.console, job.started
    with open(out / LOCK_FILE, "a") as lock, flocked(lock, f"{out}: another prepare is writing this dataset"):
        for stale in out.glob(TMP_PREFIX + "*"):  # left by a run that was killed while assembling
            shutil.rmtree(stale, ignore_errors=True)
        existing, reusable = _open_previous(out, fhash, cfg, console)
        previous = existing if reusable else None
        if previous is not None and previous.config.get("inputs_digest") == job.digest:
            shutil.rmtree(out / STORE_DIR, ignore_errors=True)
            console.print(f"[green]{out}: up to date[/] ({len(sources)} files, same settings; fingerprint "
                          f"{previous.fingerprint}); nothing to do", highlight=False)
            summary = summary_of(previous, started, up_to_date=True)
            print_summary(summary, console)
            return summary
        feature_store, committed = _open_store(out, fhash, cfg)
        metas, origin = _reusable(sources, feature_store, committed if previous is not None else 0, fhash)
        todo = [s for s in sources if s.key(fhash) not in metas]
        _say_reuse(console, origin, len(todo), len(sources))
        if job.strict:
            for s in sources:
                m = metas.get(s.key(fhash))
                if m is not None and not m.ok:
                    raise UserError(_skip_line(m))
        speed = _run(todo, metas, feature_store, cfg, fhash, job.workers, job.strict, console)

        units = [(s, metas[s.key(fhash)]) for s in sources]
        skipped = pre_skipped + [skip_record(s.path, m.reason, m.detail, s.size, s.mtime_ns)
                                 for s, m in units if not m.ok]
        usable = [(s, m) for s, m in units if m.ok]
        if not usable:
            reasons = Counter(r["reason"] for r in skipped)
            raise UserError(f"{NO_USABLE}: all {len(sources) + len(pre_skipped)} files were skipped ("
                            + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")")
        # splits stay pinned across feature rebuilds: only the split settings themselves redraw them
        last = ({"split_settings": existing.config.get("split_settings"),
                 "splits": {r["id"]: r["split"] for r in existing.manifest},
                 "speakers": {k: v["split"] for k, v in existing.speakers.items()}} if existing is not None
                else _interrupted_commit(out))
        same_split_cfg = last is not None and last["split_settings"] == job.splits_cfg
        if last is not None and not same_split_cfg:
            console.print("split settings changed since the last run: splits drawn afresh", style="yellow")
        pinned = last["splits"] if same_split_cfg else None
        # by name too: a held-out speaker whose files all got new ids (renamed, re-encoded) stays held out
        pinned_speakers = last.get("speakers") if same_split_cfg else None
        utt_ids = _utterance_ids(usable)
        by_speaker: dict[str, list[str]] = defaultdict(list)
        for (s, _), ids in zip(usable, utt_ids):
            by_speaker[s.speaker].extend(ids)
        split_of = assign_splits(dict(by_speaker), cfg.prepare, pinned, pinned_speakers)
        report = _report(sources, pre_skipped, skipped, job.ignored, usable, origin)
        try:
            fingerprint = _assemble(job, usable, utt_ids, split_of, feature_store, report)
        except BaseException:
            shutil.rmtree(out / f"{TMP_PREFIX}{os.getpid()}", ignore_errors=True)  # half a dataset helps no one
            raise
    summary = summary_of(Dataset.open(out), started, up_to_date=False, report=report)
    summary["speed"] = {**speed, "x_real_time": round(speed["hours"] * 3600 / max(speed["seconds"], 1e-9), 1)}
    warn_single_utterance_speakers(summary, console)
    warn_untrainable(summary, console)
    if speed["files"]:
        console.print(f"processed {speed['files']} files ({speed['hours']:.3f} h of audio) in {speed['seconds']:.1f} s "
                      f"with {speed['workers']} worker(s): {summary['speed']['x_real_time']:.0f}x real time",
                      highlight=False)
    console.print(f"[green]wrote {out}[/] (fingerprint {fingerprint})", highlight=False)
    print_summary(summary, console)
    return summary


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    check_output(out, folder=True)
    if out.is_dir() and any(out.iterdir()):
        ours = (out / LOCK_FILE).exists() or (out / STORE_DIR).exists() or stored_config(out, store.FORMAT) is not None
        if not ours:
            raise UserError(f"{out}: exists and is not a voiceclone dataset; choose a new or empty folder for --out")


def _interrupted_commit(out: Path) -> dict[str, Any] | None:
    """What a commit stopped before its config.json landed was making ({"recipe", "split_settings", "splits"}),
    when `out` is in that state. The commit removes config.json first, so without this the next run knew
    neither the recipe (it fell back to the demo's and rebuilt every feature) nor the splits (drawn afresh: a
    speaker held out as unseen could move into train)."""
    if (out / store.CONFIG).exists():
        return None  # a complete dataset's own config says it all; a leftover of its commit is stale
    data = store.read_json(out / COMMIT_FILE)
    if (not isinstance(data, dict) or data.get("format") != store.FORMAT or not isinstance(data.get("recipe"), dict)
            or not isinstance(data.get("split_settings"), dict) or not isinstance(data.get("splits"), dict)
            or not all(v in SPLITS for v in data["splits"].values())):
        return None
    if not isinstance(data.get("speakers"), dict):  # by name, as speakers.json has them; a journal without: by ids
        data["speakers"] = None
    return data


def _open_previous(out: Path, fhash: str, cfg: Recipe, console: Console) -> tuple[Dataset | None, bool]:
    """(the complete dataset already at `out` or None, whether its features can be reused); says why not."""
    if not (out / store.CONFIG).is_file():
        return None, False
    try:
        prev = Dataset.open(out)
    except UserError as e:
        console.print(f"previous dataset not reusable ({e}); rebuilding", style="yellow", highlight=False)
        return None, False
    if prev.config.get("features_hash") == fhash:
        return prev, True
    console.print(f"settings changed since the last run ({_changes(prev, cfg)}): rebuilding all features",
                  style="yellow", highlight=False)
    return prev, False


def _changes(prev: Dataset, cfg: Recipe) -> str:
    old, new = prev.recipe, cfg
    diffs = differences(old.audio, new.audio, "audio", sep=" -> ")
    diffs += [f"prepare.{k}: {getattr(old.prepare, k)} -> {getattr(new.prepare, k)}"
              for k in PREPARE_KEYS if getattr(old.prepare, k) != getattr(new.prepare, k)]
    version = prev.config.get("features_version")
    if version != FEATURES_VERSION:
        diffs.append(f"feature code version {version} -> {FEATURES_VERSION}")
    return "; ".join(diffs) or "feature settings"


def _open_store(out: Path, fhash: str, cfg: Recipe) -> tuple[FeatureStore, int]:
    """The feature store this run appends to, and how many of its journal entries a complete dataset at `out`
    committed (counted as reused from it; the rest as resumed from an interrupted run).

    The dataset's own store (`features/`) when its features hash is this run's (also after a run killed while
    committing), else the store an interrupted run left in STORE_DIR, else a new one there. A store that
    cannot be appended to safely (a journal shorter than what its headers declare) is never reused.
    """
    for folder in (out / FEATURES, out / STORE_DIR):
        found = FeatureStore.open(folder, cfg.audio) if (folder / store.STORE_META).is_file() else None
        if found is not None and found.meta.get("features_hash") == fhash:
            return found, found.meta.get("committed", 0) if folder.name == FEATURES else 0
    shutil.rmtree(out / STORE_DIR, ignore_errors=True)
    return FeatureStore.create(out / STORE_DIR, fhash, cfg.audio), 0


def _reusable(sources: list[Source], feature_store: FeatureStore, committed: int,
              fhash: str) -> tuple[dict[str, FileState], Counter]:
    """States of the files already done, by key, counted by where they come from: the complete dataset (the
    first `committed` journal entries) or an interrupted run."""
    index = {e.get("key"): i for i, e in enumerate(feature_store.entries)}
    metas: dict[str, FileState] = {}
    origin: Counter = Counter()
    for s in sources:
        key = s.key(fhash)
        i = index.get(key)
        meta = FileState.from_json(feature_store.entries[i]) if i is not None else None
        # a file whose process died is tried again: the cause (memory, other workers) may be gone, and the
        # file, unchanged, was otherwise left out for good
        if meta is not None and meta.version == FEATURES_VERSION and meta.detail != DIED:
            metas[key] = meta
            origin["previous" if i < committed else "cache"] += 1
    return metas, origin


def _say_reuse(console: Console, origin: Counter, todo: int, total: int) -> None:
    parts = []
    if origin["previous"]:
        parts.append(f"{origin['previous']} from the existing dataset")
    if origin["cache"]:
        parts.append(f"{origin['cache']} from an interrupted run")
    if parts:
        console.print(f"reusing {' and '.join(parts)}; {todo} of {total} files to process", highlight=False)


def _workers(requested: int, jobs: int) -> int:
    return max(1, min(requested if requested > 0 else allowed_cores(), jobs))


def _run(todo: list[Source], metas: dict[str, FileState], feature_store: FeatureStore, cfg: Recipe, fhash: str,
         workers: int, strict: bool, console: Console) -> dict[str, float]:
    """Process `todo` into the feature store (in a pool when more than one worker), filling `metas`.

    Returns files, hours of audio decoded, wall seconds and workers, for the closing line. The progress
    bars are transient: on a terminal they vanish when done, in a log they print nothing, so an error
    stays the only line.
    """
    if not todo:
        return {"files": 0, "hours": 0.0, "seconds": 0.0, "workers": 0}
    started = time.perf_counter()
    n_workers = _workers(workers, len(todo))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("files  {task.fields[hours]:.2f} h audio"), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("prepare", total=len(todo), hours=0.0)
    hours = 0.0

    def done(result: tuple[FileState, dict[str, np.ndarray] | None]) -> None:
        nonlocal hours
        meta, arrays = result
        if arrays is not None:
            meta.at = feature_store.add(meta.to_json(), **arrays)
        else:
            feature_store.skip(meta.to_json())
        metas[meta.key] = meta
        hours += (meta.seconds or 0.0) / 3600
        progress.update(task, advance=1, hours=hours)
        if strict and not meta.ok:
            raise UserError(_skip_line(meta))

    jobs = [(s.path, s.key(fhash), cfg.audio, cfg.prepare) for s in todo]
    threads = torch.get_num_threads()
    try:
        # one intra-op thread, as in a worker: the clips are too short for more to pay off
        torch.set_num_threads(1)
        # built once here, the mel basis and the F0 window are inherited by forked workers
        A.features(np.zeros(8 * cfg.audio.hop_length, dtype=np.float32), cfg.audio)
        if n_workers == 1:
            with progress:
                for job in jobs:
                    done(process_file(*job))
        else:
            _run_pool(jobs, n_workers, done, progress)
    except KeyboardInterrupt:
        feature_store.flush()
        console.print(f"interrupted: {len(feature_store.entries)} processed files are kept in "
                      f"{feature_store.folder.parent}; run the same command again to resume", style="yellow",
                      highlight=False)
        raise
    finally:
        feature_store.flush()
        torch.set_num_threads(threads)
    return {"files": len(todo), "hours": hours, "seconds": time.perf_counter() - started, "workers": n_workers}


def _run_pool(jobs: list[tuple], n_workers: int, done: Callable[[tuple], None], progress: Progress) -> None:
    # a KeyboardInterrupt raised by a signal inside submit() can leave the executor's internal locks held, and
    # shutdown then waited forever (a SIGTERM'd prepare hung): a stop is asked for here, as training asks
    # (Ctrl-C, SIGTERM, a hang-up; a second Ctrl-C means now), and raised between the executor's calls
    from voiceclone.train.distributed import StopRequest

    with StopRequest() as stop, contextlib.ExitStack() as display:
        display.callback(progress.stop)  # started by each pass, after its workers
        left = _pool_pass(jobs, n_workers, done, progress, stop)
        while left:
            # a worker died (the system's out-of-memory killer on a huge file, a crash in a decoder) and took the
            # pool with it: each file it may have held is tried alone, so only the one that kills its process
            # again is skipped, and the files never started go on in a new pool
            suspects, rest = left
            for job in suspects:
                if _pool_pass([job], 1, done, progress, stop):
                    done((_died(job[0], job[1]), None))
            left = _pool_pass(rest, n_workers, done, progress, stop) if rest else None


def _died(path: str, key: str) -> FileState:
    return FileState(key, path=path, reason="failed", detail=DIED)


def _pool_pass(jobs: list[tuple], n_workers: int, done: Callable[[tuple], None], progress: Progress,
               stop: Any) -> tuple[list[tuple], list[tuple]] | None:
    """Process `jobs` in a pool of `n_workers`: None when all are done, else (the jobs in the pool when a worker
    died, the jobs not yet submitted)."""
    # fork (Linux): workers start in milliseconds and share the parent's imported modules and warm caches;
    # torch is safe here because each worker drops to one intra-op thread before it computes anything.
    # Elsewhere fork is unsafe (macOS system libraries), so workers are spawned.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context(method), initializer=init_worker)
    pending: dict = {}
    submitted = 0
    try:
        progress.stop()  # the workers start before the display's thread runs (again)
        pool.submit(int).result()
        progress.start()
        window = 4 * n_workers  # bounded, so the parent never holds the whole corpus's futures
        for job in jobs:
            pending[pool.submit(process_file, *job)] = job
            submitted += 1
            _collect(pending, window, done, stop)
        _collect(pending, 1, done, stop)
    except BrokenProcessPool:
        if stop.requested:  # a SIGTERM to the whole group ends the workers too: a stop, not a crash
            raise KeyboardInterrupt from None
        if not pending:  # the pool broke before any file reached it: no file to blame
            raise
        for f in [f for f in pending if f.done() and not f.cancelled() and f.exception() is None]:
            done(f.result())  # finished before the break
            del pending[f]
        return list(pending.values()), jobs[submitted:]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return None


def _collect(pending: dict, most: int, done: Callable[[tuple], None], stop: Any) -> None:
    """Hand finished results to `done` (each taken out of `pending`) until fewer than `most` futures are
    pending; a stop asked meanwhile is raised here, as KeyboardInterrupt, never inside the executor."""
    while True:
        if stop.requested:
            raise KeyboardInterrupt
        if len(pending) < most:
            return
        finished, _ = wait(pending, timeout=STOP_POLL, return_when=FIRST_COMPLETED)
        for f in finished:
            result = f.result()
            del pending[f]
            done(result)


def _skip_line(rec: dict | FileState) -> str:
    if isinstance(rec, FileState):
        rec = {"path": rec.path, "reason": rec.reason, "detail": rec.detail}
    detail = rec.get("detail") or ""
    return f"{rec['path']}: {rec['reason']}" + (f" ({detail})" if detail else "")


def _utterance_ids(usable: list[tuple[Source, FileState]]) -> list[list[str]]:
    """Per file, the ids of its utterances: the file id, with #k appended when the file was split."""
    return [[s.file_id] if len(m.pieces) == 1 else [f"{s.file_id}#{k}" for k in range(len(m.pieces))]
            for s, m in usable]


def _report(sources: list[Source], pre_skipped: list[dict], skipped: list[dict], ignored: Counter,
            usable: list[tuple[Source, FileState]], origin: Counter) -> dict[str, Any]:
    return {"files": len(sources) + len(pre_skipped), "used": len(usable), "skipped_count": len(skipped),
            "skipped_by_reason": dict(Counter(r["reason"] for r in skipped).most_common()),
            "skipped": skipped,
            "pieces_dropped": sum(m.dropped for _, m in usable),
            "ignored_non_audio": dict(sorted(ignored.items())),
            "reused_from_dataset": origin["previous"], "resumed_from_cache": origin["cache"],
            "processed": len(sources) - origin["previous"] - origin["cache"]}


def _assemble(job: _Job, usable: list[tuple[Source, FileState]], utt_ids: list[list[str]], split_of: dict[str, str],
              feature_store: FeatureStore, report: dict) -> str:
    """Write each split's index and the metadata into a temporary folder inside `out`, then commit.

    The features stay where they were written. Only when most of the store is waste (files since removed or
    changed) are the ones in use copied into a fresh store."""
    out, cfg = job.out, job.cfg
    tmp = out / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if feature_store.frames * (1 - COMPACT_WASTE) > sum(m.frames for _, m in usable):
        feature_store = _compacted(feature_store, usable, tmp / FEATURES, job)
    spans: dict[str, list[tuple[int, int]]] = {name: [] for name in SPLITS}
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for (s, m), ids in zip(usable, utt_ids):
        at = m.at
        for piece, uid in zip(m.pieces, ids):
            split = split_of[uid]
            spans[split].append((at, at + piece["frames"]))
            at += piece["frames"]
            rows[split].append({"id": uid, "speaker": s.speaker, "split": split, "source": s.path,
                                "source_size": s.size, "source_mtime_ns": s.mtime_ns, **piece})
    for name in SPLITS:
        store.write_spans(tmp / name, np.array(spans[name], dtype=np.int64).reshape(-1, 2))
    manifest_text = store.write_lines(tmp / store.MANIFEST, [r for name in SPLITS for r in rows[name]])
    store.write_json(tmp / store.SPEAKERS, _speaker_stats(usable, utt_ids, split_of))
    store.write_json(tmp / store.REPORT, report)
    recipe = cfg.to_dict()
    fingerprint = store.fingerprint(recipe, manifest_text)
    config = {"format": store.FORMAT, "version": store.FORMAT_VERSION, "voiceclone": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fingerprint": fingerprint,
              "features_hash": job.fhash, "features_version": FEATURES_VERSION,
              # a dataset missing a file whose process died is never up to date: the next run tries that file
              "split_settings": job.splits_cfg,
              "inputs_digest": None if any(r["detail"] == DIED for r in report["skipped"]) else job.digest,
              "store": {"frames": feature_store.frames},
              "splits": {name: {"utterances": len(v), "frames": sum(b - a for a, b in v)} for name, v in spans.items()},
              "recipe": recipe}
    store.write_json(tmp / store.CONFIG, config)
    # the commit removes config.json first: a run stopped inside it finishes this dataset, not one with the
    # demo's recipe and splits drawn afresh
    sides = {s.speaker: "unseen" if split_of[ids[0]] == "unseen" else "train" for (s, _), ids in zip(usable, utt_ids)}
    store.write_json(out / COMMIT_FILE, {"format": store.FORMAT, "recipe": recipe, "split_settings": job.splits_cfg,
                                         "splits": split_of, "speakers": sides})
    _commit(tmp, out, feature_store)
    return fingerprint


def _speaker_stats(usable: list[tuple[Source, FileState]], utt_ids: list[list[str]],
                   split_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """speakers.json, by name: each speaker's split, utterances, seconds, voiced frames, and the mean and
    standard deviation of log-F0 over all its voiced frames, pooled from each utterance's own."""
    speakers: dict[str, dict[str, Any]] = {}
    sums: dict[str, list[float]] = {}  # the sum of voiced log-F0 and of its square
    for (s, m), ids in zip(usable, utt_ids):
        for piece, uid in zip(m.pieces, ids):
            split = split_of[uid]
            sp = speakers.setdefault(s.speaker, {"split": "unseen" if split == "unseen" else "train",
                                                 "utterances": 0, "seconds": 0.0, "voiced_frames": 0})
            sp["utterances"] += 1
            sp["seconds"] += piece["seconds"]
            n = piece["voiced_frames"]
            sp["voiced_frames"] += n
            total = sums.setdefault(s.speaker, [0.0, 0.0])
            total[0] += n * piece["logf0_mean"]
            total[1] += n * (piece["logf0_std"] ** 2 + piece["logf0_mean"] ** 2)
    for name, sp in speakers.items():
        n, (s1, s2) = sp["voiced_frames"], sums[name]
        mean = s1 / n if n else 0.0
        sp["logf0_mean"] = round(mean, 5)
        sp["logf0_std"] = round(math.sqrt(max(s2 / n - mean**2, 0.0)), 5) if n else 0.0
        sp["seconds"] = round(sp["seconds"], 3)
    return dict(sorted(speakers.items()))


def _compacted(old: FeatureStore, usable: list[tuple[Source, FileState]], folder: Path, job: _Job) -> FeatureStore:
    """A new store in `folder` holding only the features of the `usable` files, copied from `old`; their
    states' `at` move to the new store."""
    job.console.print(f"compacting the feature store ({old.frames} frames, "
                      f"{sum(m.frames for _, m in usable)} in use)", style="dim", highlight=False)
    new = FeatureStore.create(folder, job.fhash, job.cfg.audio)
    headers = old.headers()
    for _, m in usable:
        data = store.read_frames(old.folder, headers, m.at, m.at + m.frames, old.hop)
        m.at = new.add(m.to_json(), **data)
    new.flush()
    return new


def _commit(tmp: Path, out: Path, feature_store: FeatureStore) -> None:
    """Make the dataset assembled in `tmp`, with the features in `feature_store`, the one at `out`.
    config.json goes first and comes back last, so at every instant `out` is either complete or recognisably
    incomplete (the next run resumes from the store's journal)."""
    (out / store.CONFIG).unlink(missing_ok=True)
    fsync_dir(out)
    feature_store.seal()
    if feature_store.folder != out / FEATURES:
        if (out / FEATURES).exists():
            os.rename(out / FEATURES, tmp / f"old-{FEATURES}")
        os.rename(feature_store.folder, out / FEATURES)
    shutil.rmtree(out / STORE_DIR, ignore_errors=True)
    for name in (*SPLITS, store.MANIFEST, store.SPEAKERS, store.REPORT):
        src, dst = tmp / name, out / name
        if src.is_dir():
            if dst.exists():
                os.rename(dst, tmp / f"old-{name}")
            os.rename(src, dst)
        else:
            os.replace(src, dst)
    os.replace(tmp / store.CONFIG, out / store.CONFIG)
    (out / COMMIT_FILE).unlink(missing_ok=True)
    fsync_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
