"""Which split each utterance belongs to: train, val (seen speakers) or unseen (held-out speakers).

Pure functions of stable hashes and the split settings; no files, no audio. `prepare` calls assign_splits
with the splits of the dataset it updates, so adding files never moves an old utterance.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from voiceclone.config import PrepareConfig
from voiceclone.errors import UserError, first_few

# A seen speaker's utterance is in `val` when its hash falls below val_per_speaker per thousand; see assign_splits.
VAL_RATE_PER_UNIT = 1e-3
SPLIT_KEYS = ("split_salt", "val_per_speaker", "unseen_fraction", "unseen_speakers")  # the settings splits depend on


def _unit(salt: str, *parts: str) -> float:
    """A stable hash of the parts, uniform in [0, 1). A name that is not UTF-8 (lone surrogates) is hashed as
    its own bytes; every other name as before."""
    digest = hashlib.sha256("\x1f".join((salt, *parts)).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(utterances: dict[str, list[str]], prep: PrepareConfig, previous: dict[str, str] | None = None,
                  speakers_before: dict[str, str] | None = None) -> dict[str, str]:
    """utterances: speaker -> utterance ids. Returns utterance id -> 'train' | 'val' | 'unseen'.

    Speakers: the named prep.unseen_speakers if any; otherwise, among three or more speakers (and a
    fraction above 0), a speaker is unseen when hash(salt, speaker) < unseen_fraction, topped up with the
    lowest-hash others to max(1, round(unseen_fraction * speakers)), never all. Fewer than three: none. Utterances of a seen speaker: val when hash(salt, speaker, id) <
    val_per_speaker / 1000; a speaker left with fewer than min(val_per_speaker, n - 1) val utterances is
    topped up with its lowest-hash others. A single speaker therefore gets val utterances and no unseen.

    The threshold rules are pure functions of the hashes: adding files never moves what they decided.
    The two top-ups depend on what else exists, so `previous` (utterance id -> split, from the dataset
    being updated, with the same split settings) pins every utterance it holds, and top-ups choose only
    among new utterances and new speakers. Adding files to a dataset thus never moves an old utterance.
    `speakers_before` (speaker -> 'train' | 'unseen', as speakers.json has it) pins each old speaker's side
    by its name, so one whose files were all renamed or re-encoded (new ids) is no new speaker.
    """
    previous = previous or {}
    speakers_before = speakers_before or {}
    salt = prep.split_salt
    speakers = sorted(utterances)
    old_speaker_split = {}
    for spk in speakers:
        kinds = {previous[u] for u in utterances[spk] if u in previous}
        if spk in speakers_before:
            old_speaker_split[spk] = "unseen" if speakers_before[spk] == "unseen" else "seen"
        elif kinds:
            old_speaker_split[spk] = "unseen" if "unseen" in kinds else "seen"
    if prep.unseen_speakers:
        check_unseen_speakers(prep.unseen_speakers, speakers)
        unseen = set(prep.unseen_speakers)
    else:
        # a speaker once held out stays held out: moving it into train would leak it into the model
        unseen = {s for s in speakers if old_speaker_split.get(s) == "unseen"}
        new = [s for s in speakers if s not in old_speaker_split]
        if len(speakers) >= 3 and prep.unseen_fraction > 0:
            unseen |= {s for s in new if _unit(salt, s) < prep.unseen_fraction}
            # the threshold alone draws a binomial count (1 of 41 happens); top up to the expected one
            want = max(1, round(prep.unseen_fraction * len(speakers)))
            free = sorted((s for s in new if s not in unseen), key=lambda s: _unit(salt, s))
            unseen.update(free[: max(0, want - len(unseen))])
            if unseen == set(speakers):  # never hold out everyone
                unseen.discard(max(new or speakers, key=lambda s: _unit(salt, s)))
    out: dict[str, str] = {}
    rate = prep.val_per_speaker * VAL_RATE_PER_UNIT
    for spk in speakers:
        ids = utterances[spk]
        if spk in unseen:
            out.update((u, "unseen") for u in ids)
            continue
        h = {u: _unit(salt, spk, u) for u in ids}
        val = {u for u in ids if previous.get(u) == "val" or (u not in previous and h[u] < rate)}
        want = min(prep.val_per_speaker, len(ids) - 1)
        if len(val) < want:
            free = sorted((u for u in ids if u not in val and u not in previous), key=h.__getitem__)
            val.update(free[: want - len(val)])
        out.update((u, "val" if u in val else "train") for u in ids)
    return out


def check_unseen_speakers(named: Sequence[str], speakers: Sequence[str]) -> None:
    """Refuse held-out speakers that are not among `speakers` (sorted)."""
    unknown = sorted(set(named) - set(speakers))
    if unknown:
        shown = first_few(speakers, 8)
        raise UserError(f"unseen speaker(s) not in the inputs: {', '.join(unknown)} (speakers: {shown})")


def split_settings(prep: PrepareConfig) -> dict[str, Any]:
    return {k: sorted(getattr(prep, k)) if k == "unseen_speakers" else getattr(prep, k) for k in SPLIT_KEYS}
