"""Finding the inputs of `prepare`: speaker folders, CSV/TSV manifests or single files -> Sources."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from voiceclone import audio as A
from voiceclone.errors import UserError
from voiceclone.files import walk_following_links

MANIFEST_DELIMITERS = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Source:
    """One input file. `file_id` ("<speaker>/<path below the speaker folder or the manifest>") names it in
    utterance ids and split hashes, so it must not depend on where the corpus is mounted."""

    path: str  # absolute
    speaker: str
    file_id: str
    size: int
    mtime_ns: int

    def key(self, features_hash: str) -> str:
        """Cache key: changes when the file or the feature settings change."""
        raw = json.dumps([self.path, self.size, self.mtime_ns, features_hash])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


def discover(inputs: Sequence[Path | str], exclude: Path | None = None) -> tuple[list[Source], list[dict], Counter]:
    """Inputs -> (sources sorted by speaker and id, rows skipped before decoding, ignored files by extension).

    An input is a folder laid out ROOT/<speaker>/**/<file> (files directly in ROOT belong to a speaker named
    after ROOT), a .csv/.tsv manifest with `path` and `speaker` columns, or a single audio file (its
    folder names the speaker). A missing input or a folder without audio is a UserError.
    """
    if not inputs:
        raise UserError("no inputs given: name speaker folders or CSV/TSV manifests")
    found: list[Source] = []
    skipped: list[dict] = []
    ignored: Counter = Counter()
    excluded = exclude.resolve() if exclude is not None else None
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if p.is_dir():
            n = _scan_folder(p, found, skipped, ignored, excluded)
            if n == 0:
                raise UserError(f"{p}: no audio files found (looked for {', '.join(A.AUDIO_EXTENSIONS)})")
        elif p.suffix.lower() in MANIFEST_DELIMITERS:
            _read_manifest(p, found, skipped)
        elif A.is_audio_file(p):
            found.append(_source(p, _as_named(p).parent.name, p.name))
        else:
            raise UserError(f"{p}: not a folder, a .csv/.tsv manifest or an audio file")
    by_path: dict[str, Source] = {}
    by_id: dict[tuple[str, str], Source] = {}
    sources = []
    for s in found:
        if s.path in by_path:  # the same file named twice (two inputs overlap): not an error...
            first = by_path[s.path]
            if first.speaker != s.speaker:  # ...unless the two name different speakers: say which was kept
                skipped.append(skip_record(s.path, "two speakers", f"named {s.speaker!r} here and {first.speaker!r} "
                                           f"before; kept as {first.speaker!r}", s.size, s.mtime_ns))
            continue
        by_path[s.path] = s
        if (s.speaker, s.file_id) in by_id:
            other = by_id[s.speaker, s.file_id].path
            skipped.append(skip_record(s.path, "duplicate id", f"{s.file_id} is also {other}"
                                       + _spelling_note(s.path, other), s.size, s.mtime_ns))
            continue
        by_id[s.speaker, s.file_id] = s
        sources.append(s)
    sources.sort(key=lambda s: (s.speaker, s.file_id))
    return sources, skipped, ignored


def speaker_name(name: str) -> str:
    """A speaker's name in one spelling, Unicode NFC. "é" is one code point or "e" and a combining accent (how
    macOS stores file names, and what some editors write), which print alike: taken as they come, one name
    spelled both ways would be two speakers. Already-NFC names, and names that are not UTF-8 (lone
    surrogates), come back unchanged, so the ids of a dataset prepared before stay as they were."""
    return unicodedata.normalize("NFC", name)


def _spelling_note(path: str, other: str) -> str:
    """Why two different paths got one id, when it is not visible: they differ only in the Unicode spelling of
    a name (two speaker folders "café"), which prints alike."""
    differ = path != other and speaker_name(path) == speaker_name(other)
    return " (the same name in another Unicode spelling)" if differ else ""


def _as_named(path: Path) -> Path:
    """`path` made absolute ("." and ".." gone) without following links: a folder is named as the user named
    it. Resolved, a file that is a link (git-annex and DataLad keep every file as one, into a folder per
    file) was filed under its target's folder, one speaker per file, and a linked folder under its target."""
    return Path(os.path.abspath(path))


def _source(path: Path, speaker: str, rel: str) -> Source:
    # every way in (folder, manifest row, single file) passes here: the one place names are made one spelling;
    # the path stays as the file system spells it, or it would not open
    speaker = speaker_name(speaker)
    st = path.stat()
    return Source(str(path.resolve()), speaker, f"{speaker}/{rel}", st.st_size, st.st_mtime_ns)


def _scan_folder(root: Path, found: list[Source], skipped: list[dict], ignored: Counter,
                 excluded: Path | None) -> int:
    root_name = _as_named(root).name
    n = 0
    for folder, dirs, files in walk_following_links(root):
        here = Path(folder)
        # hidden folders hold tool state (.git, a dataset's cache), never recordings
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (excluded is None or (here / d).resolve() != excluded)
                         and not _loops(here, d))
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if not A.is_audio_file(path):
                ignored[path.suffix.lower() or "(no extension)"] += 1
                continue
            parts = path.relative_to(root).parts
            speaker, rel = (root_name, parts[0]) if len(parts) == 1 else (parts[0], "/".join(parts[1:]))
            try:
                found.append(_source(path, speaker, rel))
            except (OSError, RuntimeError) as e:  # a dangling or looping symlink: one file, not the whole run
                skipped.append(skip_record(str(path), "missing", e.strerror if isinstance(e, OSError) and e.strerror
                                           else str(e)))
            n += 1
    return n


def _loops(here: Path, name: str) -> bool:
    """Whether the folder link here/name leads back to `here` or above it: followed, it would walk the corpus
    again below one speaker, and the files met first there would be filed under that speaker."""
    if not (here / name).is_symlink():
        return False
    try:
        target, real = (here / name).resolve(), here.resolve()
    except (OSError, RuntimeError):  # a link that cannot be resolved leads nowhere useful
        return True
    return target == real or target in real.parents


def _read_manifest(path: Path, found: list[Source], skipped: list[dict]) -> None:
    try:
        raw = path.read_bytes()
        # the byte-order mark says the encoding: Excel's "Unicode Text" export is UTF-16 (with one), its
        # "CSV UTF-8" UTF-8 with one; without one, UTF-8
        encoding = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        # most often a spreadsheet's plain "CSV" export, in the system's 8-bit code page
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); save it as UTF-8 "
                        "(a spreadsheet's \"CSV UTF-8\" export)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read manifest ({e})") from None
    # csv refuses a field longer than its limit (131072 characters), and a transcript column may hold a whole
    # chapter: no field can be longer than the file, so that is the limit while reading it
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    try:
        # lines end at \n, \r\n or \r only (newline="", as csv asks): str.splitlines also ends them at a form
        # feed, U+2028 or U+0085, which a transcript column may hold, and cut that row in two
        delimiter = _delimiter(text, MANIFEST_DELIMITERS[path.suffix.lower()])
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as e:  # what the default (lenient) dialect still refuses
        raise UserError(f"{path}: not a valid manifest ({e})") from None
    finally:
        csv.field_size_limit(limit)
    if not rows:
        raise UserError(f"{path}: empty manifest (expected a header with 'path' and 'speaker' columns)")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "speaker" not in header:
        raise UserError(f"{path}: manifest needs 'path' and 'speaker' columns (found: {', '.join(header) or 'none'})")
    ip, isp = header.index("path"), header.index("speaker")
    base = path.resolve().parent
    n = 0
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        n += 1
        rel = row[ip].strip() if ip < len(row) else ""
        speaker = row[isp].strip() if isp < len(row) else ""
        # a path or a speaker never holds a line break: a quote opened in this row and never closed has read
        # the lines after it into one field, and skipping that row would lose all of them without a word
        swallowed = max(rel.count("\n"), speaker.count("\n"), rel.count("\r"), speaker.count("\r"))
        if swallowed:
            raise UserError(f"{path}: row {line}: a quote opened there is never closed, so the {swallowed} "
                            "line(s) after it read as one field; close or remove that quote")
        if not rel or not speaker:
            skipped.append(skip_record(f"{path}:{line}", "bad manifest row", "empty path or speaker"))
            continue
        # a NUL or an escape is never part of a name: a NUL makes a second speaker that prints like the first,
        # an escape sequence reaches the terminal in every table that names the speaker
        control = next((c for c in speaker if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            skipped.append(skip_record(f"{path}:{line}", "bad manifest row",
                                       f"speaker {speaker!r} holds a control character ({control!r})"))
            continue
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        if not file.is_file():
            skipped.append(skip_record(str(file), "missing", f"listed in {path}:{line}"))
            continue
        resolved = file.resolve()
        name = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.as_posix()
        found.append(_source(file, speaker, name))
    if n == 0:
        raise UserError(f"{path}: manifest lists no files")


def _delimiter(text: str, default: str) -> str:
    """The separator the header is written with: the extension's, unless only another of , ; and tab splits
    it into 'path' and 'speaker'. European Excel saves "CSV" with ';' (its decimal point is the comma), and
    tab-separated exports are often named .csv; the header is the evidence, so no row is guessed from."""
    for d in (default, *(c for c in ",;\t" if c != default)):
        header = {h.strip().lower() for h in next(csv.reader(io.StringIO(text, newline=""), delimiter=d), [])}
        if {"path", "speaker"} <= header:
            return d
    return default


def skip_record(path: str, reason: str, detail: str = "", size: int = -1, mtime_ns: int = -1) -> dict:
    return {"path": path, "reason": reason, "detail": detail, "size": size, "mtime_ns": mtime_ns}
