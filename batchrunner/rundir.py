"""Choosing, naming and describing run directories (``run.json``), and checking resumes.

A resume is only safe when the input is the same file it was: the resume key is the row's
position in the input. So ``run.json`` records a fingerprint of the input, and a resume with a
different one is refused with a clear message; so is one that would build the remaining requests
differently (another ``--model`` default, ...), and one of a directory written by a newer
batchrunner (``run.json``'s ``format``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchrunner.redaction import REDACTED

if TYPE_CHECKING:
    from collections.abc import Callable

RUN_JSON = "run.json"
_FINGERPRINT_BYTES = 1 << 20
#: The layout of the run directory and ``run.json`` that this version writes (``format`` in
#: ``run.json``; directories written before it existed are format 1). A version that changes
#: what an older one would misread bumps it, and older versions then refuse to resume.
RUN_FORMAT = 1
#: Options (as ``run.json``'s ``config`` records them) that shape the request bodies built from
#: the input, and how they are given on the command line. A resume must keep them: the rows of
#: one run would otherwise answer different requests.
REQUEST_SHAPING = {
    "model": "--model",
    "max_tokens": "--max-tokens",
    "system": "--system",
    "model_override": "--model-override",
    "prompt_column": "--prompt-column",
    "metadata_columns": "--metadata-column",
}
#: Of those, the ones that only apply to Parquet input (older versions recorded them, unused,
#: for JSONL too).
PARQUET_ONLY = frozenset({"prompt_column", "metadata_columns"})
#: What check_same_requests compares: those options and the -H headers that are not secret.
_SHAPING_AND_HEADERS = {**REQUEST_SHAPING, "headers": "-H"}


class RunDirError(Exception):
    """The run directory cannot be used as asked; the message is for the user."""


def input_fingerprint(path: Path) -> dict[str, Any]:
    """Size, a hash of the first and last MiB, and a SHA-256 of the whole file.

    The whole-file hash catches an edit in the middle that keeps the size (a changed
    ``max_tokens``), which the head and tail miss; it costs ~1 s per 1.5 GB here, once per
    session, next to counting the rows, which reads the file anyway. Runs recorded before it
    existed are compared on what they have.
    """
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if stat.st_size > _FINGERPRINT_BYTES:
            fh.seek(max(_FINGERPRINT_BYTES, stat.st_size - _FINGERPRINT_BYTES))
            digest.update(fh.read(_FINGERPRINT_BYTES))
        fh.seek(0)
        whole = hashlib.file_digest(fh, "sha256").hexdigest()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "blake2b_head_tail": digest.hexdigest(),
        "sha256": whole,
    }


def default_run_name(requests: Path, mode: str, now: float | None = None) -> str:
    """``<input stem>-<mode>-<UTC yyyymmdd-HHMMSS>``, e.g. ``demo-sync-20261126-101500``."""
    stem = _name_stem(requests)
    stamp = datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{mode}-{stamp}"


def _name_stem(requests: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", requests.name.split(".")[0]) or "run"


def read_run_json(run_dir: Path) -> dict[str, Any] | None:
    """The run's description, or ``None`` if the directory has none (or it is unreadable)."""
    try:
        data = orjson.loads((run_dir / RUN_JSON).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def load_run_json(run_dir: Path, what_next: str | None = None) -> dict[str, Any] | None:
    """The run's description, ``None`` if the directory has no ``run.json``.

    :param what_next: the other way on, ending the error (e.g. which option starts afresh).
    :raises RunDirError: ``run.json`` is there but damaged (cut short by a full disk, edited):
        said so, since it is not "not a run directory": its rows are still there.
    """
    path = run_dir / RUN_JSON
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    data, problem = _parse_run_json(raw)
    if data is not None:
        return data
    raise RunDirError(_damaged_message(run_dir, problem, what_next))


def _parse_run_json(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The description in ``raw``, or ``None`` and what is wrong with it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc})"
    if isinstance(data, dict):
        return data, ""
    return None, f"holds a JSON {type(data).__name__}, not the run's description"


def _damaged_message(run_dir: Path, problem: str, what_next: str | None) -> str:
    return (
        f"{run_dir / RUN_JSON} {problem}; the rows already written ({run_dir / 'data'}) are "
        "intact. Restore run.json (e.g. from a backup) to go on with this run"
        + (f", or {what_next}" if what_next else "")
    )


#: An input path written out whole in a damaged run.json: then it is known whose run it is.
_COMPLETE_PATH = re.compile(rb'"path":\s*"(?:[^"\\]|\\.)*"')


def find_latest_run(
    results_root: Path,
    requests: Path,
    mode: str | None = None,
    *,
    what_next: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path | None:
    """The most recently started run directory under ``results_root`` for the same input file:
    the latest in ``mode`` if there is one (a sync and a stream run of one file are both
    common), else the latest of any mode (the resume then says the mode differs).

    A directory whose ``run.json`` is damaged (cut short, edited) is not skipped in silence when
    it may be a run of this input (its text names the input, or it has this input's default
    name): if it is the latest such run, resuming an older one (or none) would leave its rows
    aside, so it is refused; an older one is warned of. One whose input cannot be told is
    warned of.

    :param what_next: the other way on, ending the error.
    :param warn: called with each warning (one line).
    :raises RunDirError: the latest run of this input has a damaged ``run.json``, with the
        message :func:`load_run_json` gives.
    """
    if not results_root.is_dir():
        return None
    wanted = str(requests.resolve())
    quoted = orjson.dumps(wanted)
    default_name = re.compile(
        re.escape(_name_stem(requests)) + r"-(sync|stream|async)-(\d{8}-\d{6})(-\d+)?"
    )
    best: tuple[bool, float, Path] | None = None
    damaged: list[tuple[float, Path, str]] = []  # (created, directory, problem)
    unknown: list[tuple[Path, str]] = []
    for child in results_root.iterdir():
        if not child.is_dir():
            continue
        try:
            raw = (child / RUN_JSON).read_bytes()
        except FileNotFoundError:
            continue
        info, problem = _parse_run_json(raw)
        if info is None:
            named = default_name.fullmatch(child.name)
            if quoted in raw or named:
                stamp = named.group(2) if named else None
                damaged.append((_created_at(raw, child, stamp), child, problem))
            elif not _COMPLETE_PATH.search(raw):  # cut before its input's path: cannot tell
                unknown.append((child, problem))
            continue
        if (info.get("input") or {}).get("path") != wanted:
            continue
        same_mode = mode is not None and (info.get("config") or {}).get("mode") == mode
        key = (same_mode, float(info.get("created_at") or 0), child)
        if best is None or key[:2] > best[:2]:
            best = key
    if damaged:
        created, latest, problem = max(damaged)
        if best is None or created >= best[1]:
            raise RunDirError(_damaged_message(latest, problem, what_next))
    for _, child, problem in sorted(damaged):
        if warn is not None and best is not None:
            warn(
                f"Warning: {child / RUN_JSON} {problem}: an earlier run of {requests} than "
                f"{best[2]}, which is resumed; its rows ({child / 'data'}) are intact: restore "
                f"run.json to resume it with --out {child}"
            )
    for child, problem in sorted(unknown):
        if warn is not None:
            warn(
                f"Warning: {child / RUN_JSON} {problem}, so whether it is a run of {requests} "
                f"cannot be told: skipped; its rows ({child / 'data'}) are intact: restore "
                f"run.json to resume it with --out {child}"
            )
    return best[2] if best else None


def _created_at(raw: bytes, run_dir: Path, stamp: str | None) -> float:
    """When a run whose ``run.json`` is damaged started: as far as its text tells, else as its
    default name tells (``yyyymmdd-HHMMSS``, UTC), else when the file was last written (later
    than the start: such a run counts as the more recent)."""
    found = re.search(rb'"created_at":\s*([0-9][0-9.eE+-]*)', raw)
    if found:
        try:
            return float(found.group(1))
        except ValueError:
            pass
    if stamp is not None:
        try:
            return datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    try:
        return (run_dir / RUN_JSON).stat().st_mtime
    except OSError:
        return time.time()


def check_resumable(info: dict[str, Any], fingerprint: dict[str, Any] | None, mode: str,
                    *, collect: bool = False) -> None:
    """Refuse a resume whose input or mode differs from the original run, or a run directory
    written by a newer batchrunner (a ``format`` above :data:`RUN_FORMAT`).

    :param fingerprint: the input's fingerprint now (``None``: the input is gone; only
        ``collect`` accepts that).
    :param collect: for ``collect``, which polls without the input: a changed input is
        refused with that way out, not with "start a new run" (paying for every job again).
    :raises RunDirError: with what differs and what to do.
    """
    written = info.get("format", 1)
    if not isinstance(written, int) or isinstance(written, bool) or written > RUN_FORMAT:
        by = ((info.get("environment") or {}).get("versions") or {}).get("batchrunner")
        raise RunDirError(
            "this run directory was written by a newer batchrunner"
            + (f" ({by})" if by else "")
            + f" in format {written!r}; this one ({_own_version()}) knows format "
            f"{RUN_FORMAT} at most and could misread it: resume it with that version"
        )
    if info.get("kind") == "bench":
        raise RunDirError(
            "this is a bench's run directory: a bench cannot be resumed or collected; run it "
            "again with another --out"
        )
    old = info.get("input") or {}
    if fingerprint is None:
        pass
    elif not isinstance(old, dict) or old.get("size") is None:
        # Nothing to match the file against: the rows could belong to any input.
        raise RunDirError(
            f"cannot resume: run.json records no input file (its \"input\" field is missing or "
            "damaged), so rows already written cannot be matched to "
            f"{fingerprint['path']}. Start a new run (--out NEW_DIR), or restore run.json."
        )
    elif (
        old.get("size") != fingerprint["size"]
        or old.get("blake2b_head_tail") != fingerprint["blake2b_head_tail"]
        or old.get("sha256", fingerprint["sha256"]) != fingerprint["sha256"]
    ):
        if collect:
            raise RunDirError(
                f"cannot collect with the input {fingerprint['path']}: it is not the file this "
                f"run started with ({old.get('size')} bytes), and rows are matched to it by "
                "position. collect can poll without it: move the changed file away (jobs "
                "recorded by older versions then get no model_requested or metadata in their "
                "rows), or put the original back, and collect again."
            )
        raise RunDirError(
            f"cannot resume: the input {fingerprint['path']} is not the file this run started "
            f"with ({old.get('path')}, {old.get('size')} bytes); rows are matched by position, so "
            "resuming with a changed file would mix results. Start a new run (--out NEW_DIR)."
        )
    old_mode = (info.get("config") or {}).get("mode")
    if old_mode and old_mode != mode:
        raise RunDirError(
            f"cannot resume a --mode {old_mode} run with --mode {mode}; use --mode {old_mode}"
        )


def check_same_requests(
    info: dict[str, Any],
    config: dict[str, Any],
    parquet_input: bool,
    allow: bool = False,
) -> str | None:
    """Refuse a resume that would build the remaining requests differently from the rows
    already written: their ``model_requested``, ``max_tokens``, ... would silently differ from
    one part of the run to the other, while ``run.json`` names one setting.

    Whether it applies is the caller's business: before the run has rows (or jobs) that it
    keeps, an option may still be fixed.

    :param info: the run's ``run.json``.
    :param config: this session's configuration, as :meth:`RunConfig.public_dict` gives it.
    :param parquet_input: the input is Parquet (else the Parquet-only options are not compared).
    :param allow: ``--allow-changed-options``: return the difference (for a warning) instead of
        raising; each session's own options are in ``run.json``.
    :return: what changed, when allowed; ``None`` when nothing did.
    :raises RunDirError: naming the option, its recorded value and what to do.
    """
    recorded = info.get("config") or {}
    was, given = [], []
    for key, option in _SHAPING_AND_HEADERS.items():
        if key not in recorded or (key in PARQUET_ONLY and not parquet_input):
            continue
        before, now = _normalized(recorded[key], key), _normalized(config.get(key), key)
        if before != now:
            shown_before, shown_now = _as_given(option, before), _as_given(option, now)
            if shown_before == shown_now:  # long texts that differ past what is shown
                where = _first_difference(before, now)
                shown_before += f" (differs from the one given after {where} characters)"
            was.append(shown_before)
            given.append(shown_now)
    if not was:
        return None
    # After an --allow-changed-options session the rows differ; the config is the last one's.
    mixed = any(
        _normalized((session.get("config") or recorded).get(key), key)
        != _normalized(recorded.get(key), key)
        for session in info.get("sessions") or ()
        for key in _SHAPING_AND_HEADERS
    )
    who = "this run's last session sent its rows" if mixed else "this run's rows were sent"
    sent = f"{who} with {' and '.join(was)}"
    if allow:
        return f"{sent}, and the rest will be sent with {' and '.join(given)}"
    raise RunDirError(
        f"cannot resume with {' and '.join(given)}: {sent}, and the rest must be sent the same "
        "way, or one run would mix two kinds of requests (the exact values are under config "
        "in run.json). Resume with the same options, start a new run (another --out), or add "
        "--allow-changed-options to go on anyway (each session's options are recorded in "
        "run.json's sessions)"
    )


def _first_difference(before: Any, now: Any) -> int:
    a, b = str(before), str(now)
    differing = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(differing, min(len(a), len(b)))


def _normalized(value: Any, key: str = "") -> Any:
    if key == "headers":
        # As `name: value`, secret ones left out: an extra header may shape the requests
        # (anthropic-beta), while a credential may change between sessions (a rotated key).
        if not isinstance(value, dict):
            return []
        return sorted(f"{k.lower()}: {v}" for k, v in value.items() if v != REDACTED)
    return list(value) if isinstance(value, (list, tuple)) else value


def _as_given(option: str, value: Any) -> str:
    """How an option looks on the command line (long text cut short), or ``no --x``."""
    if value is None or value == []:
        return f"no {option}"
    values = value if isinstance(value, list) else [value]
    shown = []
    for v in values:
        text = str(v)
        text = text if len(text) <= 60 else text[:57] + "..."
        shown.append(f"{option} {text!r}" if isinstance(v, str) else f"{option} {text}")
    return " ".join(shown)


def _own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("batchrunner")
    except metadata.PackageNotFoundError:
        return "unknown version"


def environment() -> dict[str, Any]:
    """Versions and host facts for ``run.json`` (nothing secret)."""
    from importlib import metadata

    versions = {}
    for dist in ("batchrunner", "httpx", "aiohttp", "pyarrow", "pandas", "orjson", "uvloop"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }
