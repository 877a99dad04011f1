"""Plain-text rendering of a report (:func:`format_report`) and of ``run``'s closing summary
(:func:`format_short`).

Every table header says which rows it uses, so a reader never has to guess whether failed
requests were counted. Works only from the JSON-ready dicts of :mod:`batchrunner.report`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

__all__ = [
    "CLIENT_BOUND_MARK",
    "Table",
    "comparison_tables",
    "fmt_duration",
    "fmt_usd",
    "format_report",
    "format_short",
    "plural",
    "rejected_note",
    "run_header",
    "run_keys",
    "run_tables",
    "schedule_lines",
    "stage_table",
    "warmup_line",
]

_STATUSES = ("ok", "error", "timeout", "expired", "cancelled")

_SPARKS = "▁▂▃▄▅▆▇█"
_CATEGORY_LABELS = {"input": "input", "output": "output", "cache_write_5m": "write 5m",
                    "cache_write_1h": "write 1h", "cache_read": "read"}
_FEE_LABELS = {"web_search": "web search"}


def _places(value: float, least: int) -> int:
    """Decimals for *value*: *least*, or two significant digits when *least* would round a
    value that is not zero to zero (the rule of the error rates, :func:`_decimals`)."""
    a = abs(value)
    if a == 0 or round(a, least) != 0:
        return least
    return 1 - math.floor(math.log10(a))


def fmt_duration(seconds: float | None) -> str:
    """``812 µs``, ``197.6 ms``, ``2.31 s``, ``4m05.0s``; ``-`` for None. A duration that is
    not zero never reads as zero: ``0.49 µs``, ``-0.49 µs`` (a delta), not ``-0 µs``."""
    if seconds is None:
        return "-"
    a = abs(seconds)
    if a < 1e-3:
        us = seconds * 1e6
        return f"{us:z,.{_places(us, 0)}f} µs"
    if a < 1:
        return f"{seconds * 1e3:,.1f} ms"
    if a < 600:
        return f"{seconds:,.2f} s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s"


def fmt_usd(value: float | None) -> str:
    """``$1,234.56``, ``$0.0939``, ``$0.000412``; ``<$0.000001`` for a cost too small for six
    decimals (it is not zero); ``-`` for None (unknown, never 0)."""
    if value is None:
        return "-"
    a = abs(value)
    sign = "-" if value < 0 else ""
    if a == 0:
        return "$0"
    # Decided on the rounded figure: 0.0099999 is "$0.0100", not "$0.010000".
    if round(a, 2) >= 1:
        return f"{sign}${a:,.2f}"
    if round(a, 4) >= 0.01:
        return f"{sign}${a:.4f}"
    if round(a, 6) > 0:
        return f"{sign}${a:.6f}"
    return f"{'> -' if sign else '<'}$0.000001"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,000 rows``: a count with its noun in the right number."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: float | None, decimals: int = 1) -> str:
    """A share as a percentage; one that is not zero never reads as zero (1 error in 400,000
    rows is ``0.00025%``, not ``0.0%``)."""
    if value is None:
        return "-"
    return f"{value * 100:z.{_decimals([value], decimals)}f}%"


def _decimals(shares: Sequence[float | None], least: int) -> int:
    """Decimals (at least *least*) for percentages of *shares* so that no share other than
    zero rounds to zero: two significant digits for the smallest."""
    small = [abs(v) * 100 for v in shares if v]
    if not small:
        return least
    return min(max(least, 1 - math.floor(math.log10(min(small)))), 12)


def _rate(value: float | None) -> str:
    """``72.1``, ``2,316``; one request in a minute is ``0.017``, not ``0.0``."""
    if value is None:
        return "-"
    return f"{value:z,.{_places(value, 1)}f}" if abs(value) < 1000 else f"{value:,.0f}"


@dataclass(slots=True)
class Table:
    """One table of the report, rendered as text here and as HTML by :mod:`report_html`.

    :param title: what the table shows and which rows it uses.
    :param left: how many leading columns are text (flush left); ``last_left`` for the last one.
    :param notes: lines printed after the table; ``text_notes`` only in text (the HTML has plots).
    :param flagged: indices of rows to flag (client-bound bench stages): the text marks them in
        a cell, the HTML also colours the row.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    left: int = 1
    last_left: bool = False
    notes: list[str] = field(default_factory=list)
    text_notes: list[str] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)

    def text(self) -> list[str]:
        out = [self.title]
        if self.headers and self.rows:
            out += _align(self.headers, self.rows, self.left, self.last_left)
        out += [f"  {n}" for n in (*self.notes, *self.text_notes)]
        return out


def _align(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1,
           last_left: bool = False) -> list[str]:
    """Aligned columns: the first *left* columns flush left, the others right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < left or (last_left and i == last) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


#: Appended to the stage label of a client-bound bench stage in every table.
CLIENT_BOUND_MARK = " !"


def _client_bound(run: dict[str, Any]) -> set[str]:
    stages = run.get("stages") or {}
    return {e["stage"] for e in stages.get("per_stage", []) if e["client_bound"]}


def _sections(run: dict[str, Any], width: int) -> list[tuple[list[str], dict[str, Any]]]:
    """``(group label cells, section)`` for the whole run, then each group (*width* label
    cells: the number of group keys, so that a run without rows still fills its columns)."""
    groups = run["groups"]
    if groups:
        width = len(groups[0]["key"])
    if not width:
        return [([], run["overall"])]
    bound = _client_bound(run)
    out = [(["all"] + [""] * (width - 1), run["overall"])]
    for g in groups:
        cells = [f"{v}{CLIENT_BOUND_MARK}" if k == "stage" and v in bound else v
                 for k, v in g["key"].items()]
        out.append((cells, g))
    return out


def run_keys(run: dict[str, Any], by: Sequence[str]) -> list[str]:
    """The group keys of one run: a bench run is grouped by stage first, whatever ``--by``."""
    stages = run.get("stages")
    return list(stages["group_by"]) if stages else list(by)


def _target(t: dict[str, Any]) -> str:
    if t.get("rate") is not None:
        return f"rate {t['rate']:g}/s"
    if t.get("concurrency") is not None:
        return f"concurrency {t['concurrency']}"
    return "-"


def _pq(d: dict[str, Any] | None, key: str) -> str:
    return fmt_duration(d[key]) if d else "-"


def stage_table(run: dict[str, Any]) -> Table:
    """One row per bench stage: target, load achieved, latency, errors, SLOs and verdict."""
    st = run["stages"]
    entries = st["per_stage"]
    ttft = any(e["ttft_s"] for e in entries)
    slos = bool(st["slos"]) or any(e["slo_met"] is not None for e in entries)
    # A leading "!" column only when some stage is client-bound, so the flag stands out.
    mark = any(e["client_bound"] for e in entries)
    headers = [""] * mark + ["stage", "target", "requests", "warm-up", "ok/s", "sent/s",
                             "lag p99", "lat p50", "lat p99"]
    headers += ["TTFT p50", "TTFT p99"] if ttft else []
    headers += ["errors"] + (["goodput/s", "SLO"] if slos else []) + ["verdict"]
    rows, flagged = [], []
    for i, e in enumerate(entries):
        if e["client_bound"]:
            flagged.append(i)
        lag = e["send_lag_s"]
        row = ["!" if e["client_bound"] else ""] * mark + [e["stage"], _target(e["target"]),
               _int(e["requests"]), _int(e["warmup_requests"]), _rate(e["ok_requests_per_s"]),
               _rate(e["achieved_send_rate"]), _pq(lag, "p99"),
               _pq(e["latency_s"], "p50"), _pq(e["latency_s"], "p99")]
        if ttft:
            row += [_pq(e["ttft_s"], "p50"), _pq(e["ttft_s"], "p99")]
        row.append(_pct(e["error_rate"]))
        if slos:
            met = {True: "met", False: "MISSED", None: "-"}[e["slo_met"]]
            row += [_rate(e["goodput_rps"]), met]
        row.append(e["verdict"] or "-")
        rows.append(row)
    source, ended = st["source"], st.get("bench_status")
    if source:
        whence = f"goodput, SLO and verdict from {source}"
    elif ended:
        whence = f"the bench ended {ended} before any stage did: no goodput, SLO or verdict"
    else:
        whence = "no bench.json yet: no goodput, SLO or verdict"
    title = f"Stages (measured rows, warm-up excluded; each stage over its own window; {whence})"
    t = Table(title, headers, rows, left=2 + mark, last_left=True, flagged=flagged)
    if st["slos"]:
        t.notes.append("SLOs: " + ", ".join(s["slo"] for s in st["slos"])
                       + "; goodput = ok requests meeting every per-request SLO, per second")
    sat = st["saturation"]
    if sat:
        best, worst = sat.get("highest_passing_rate"), sat.get("lowest_failing_rate")
        line = "saturation: " + (f"highest passing rate {best:g}/s" if best is not None
                                 else "no rate passed")
        if worst is not None:
            line += f"; lowest failing rate {worst:g}/s ({sat.get('failure') or 'failed'})"
        if sat.get("note"):
            line += f"; {sat['note']}"
        t.notes.append(line)
    if flagged:
        names = ", ".join(entries[i]["stage"] for i in flagged)
        t.notes.append(f"! CLIENT-BOUND: {names}: the client could not keep this load (it fell "
                       "behind its schedule or its CPU was pegged), so these figures show the "
                       "client's limit, not the gateway's; add --workers or machines")
    t.notes += st["notes"]
    return t


#: The client's event-loop lag p99 above which the closing summary says its timings include
#: its own delay (bench's client-bound rule uses the same bound).
LOOP_LAG_NOTE_S = 0.01

#: Requests in flight at this share of the cap or more: the cap was what held sends back.
_AT_CAP = 0.95


def schedule_lines(schedule: dict[str, Any] | None) -> list[str]:
    """Two ``schedule`` lines when an open loop did not keep its schedule (else none): the
    figures, then the likely reason: from the times the run found its in-flight cap full when
    it recorded them, else from the in-flight peak when the report measured it."""
    if not schedule or schedule["kept"]:
        return []
    rates = ", ".join(f"{r:,g}/s" for r in schedule["target_rates"])
    lag = schedule["send_lag_s"] or {}
    figures = (f"--rate {rates}, sent {_rate(schedule['achieved_send_rate'])}/s (its schedule "
               f"{_rate(schedule['scheduled_send_rate'])}/s), send lag p99 "
               f"{fmt_duration(lag.get('p99'))}, max {fmt_duration(lag.get('max'))} (queue_wait_s "
               f"of {plural(schedule['rows_used'], 'sent row')})")
    caps = schedule["in_flight_caps"]
    cap = f"-c {', '.join(f'{c:,}' for c in caps)}" if caps else "-c"
    peak = schedule.get("in_flight_peak")
    waits = schedule.get("cap_waits")
    if waits is not None and caps:  # counted by the run itself: exact where the peak is a guess
        seen = f"{peak:,}, " if peak is not None else ""
        if waits:
            often = "once" if waits == 1 else f"{waits:,} times"
            why = (f"requests in flight reached the cap ({seen}{cap}) {often}: sends waited for "
                   "the gateway's answers (raise -c, or lower --rate)")
        else:
            peaked = f"peaked at {peak:,}, never reaching" if peak is not None else "never reached"
            why = (f"requests in flight {peaked} the cap ({cap}): the client's CPU most likely "
                   "(split the load over processes or machines)")
    elif peak is not None and caps and peak >= _AT_CAP * min(caps):
        why = (f"requests in flight reached the cap ({peak:,}, {cap}): sends waited for the "
               "gateway's answers (raise -c, or lower --rate)")
    elif peak is not None and caps:
        why = (f"requests in flight peaked at {peak:,}, under the cap ({cap}): the client's CPU "
               "most likely (split the load over processes or machines)")
    else:
        why = f"the client's CPU, or the in-flight cap ({cap}) full while the gateway was slow"
    # A capped client was waiting, not busy; otherwise it may have read answers late too.
    capped = why.startswith("requests in flight reached the cap")
    outages = schedule.get("gateway_outages") or 0
    if outages:  # first: while the gateway could not be connected to, nothing was sent
        sessions = "sessions" if (schedule.get("sessions") or 0) > 1 else "session"
        times = "once" if outages == 1 else f"{outages:,} times"
        why = (f"the gateway could not be connected to {times} during the --rate {sessions}: "
               f"requests waited for it; otherwise {why}")
    limited = schedule.get("rate_limited") or 0
    if limited:  # requests waited for the gateway's rate limit, not for the client
        sessions = "sessions" if (schedule.get("sessions") or 0) > 1 else "session"
        why = (f"the gateway rate-limited {plural(limited, 'attempt')} (HTTP 429) during the "
               f"--rate {sessions}: requests waited for its limit; otherwise {why}")
    if capped or outages or limited:
        timings = "total_s and queue_wait_s include this lag, latency_s does not"
    else:
        timings = ("total_s and queue_wait_s include this lag; latency_s leaves it out, but a "
                   "client too busy to send on time also reads answers late, so latency_s, "
                   "ttfb_s and ttft_s may be inflated too")
    return [f"schedule   NOT KEPT: {figures}", f"           likely cause: {why}; {timings}"]


def warmup_line(run: dict[str, Any]) -> str | None:
    """``warm-up rows excluded: N (...)`` for a bench run, else None."""
    st = run.get("stages")
    if not st:
        return None
    per = ", ".join(f"{k} {v:,}" for k, v in st["warmup_by_stage"].items())
    cost = st["warmup_cost_usd"]
    # Unpriced warm-up rows make it a lower bound (it was left out altogether).
    complete = st.get("warmup_cost_complete", True)
    shown = fmt_usd(cost) if complete else f">= {fmt_usd(cost)}"
    return (f"warm-up rows excluded: {st['warmup_rows']:,}" + (f" ({per})" if per else "")
            + " from every figure below" + (f"; their cost {shown} is in no total"
                                            if cost or not complete else ""))


def _spark(values: Sequence[float], width: int = 60) -> str:
    if not values:
        return ""
    if len(values) > width:  # average neighbouring buckets down to *width* characters
        step = len(values) / width
        cuts = [int(i * step) for i in range(width)] + [len(values)]
        values = [sum(values[a:b]) / max(b - a, 1) for a, b in itertools.pairwise(cuts)]
    top = max(values)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(int(v / top * (len(_SPARKS) - 1) + 0.5), len(_SPARKS) - 1)]
                   for v in values)


def _iso_text(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_header(run: dict[str, Any]) -> list[str]:
    """Lines naming the run and its time window."""
    head = ", ".join(x for x in (run.get("mode"), run.get("status")) if x)
    out = [f"== {run['name']}" + (f" ({head})" if head else "")
           + (f"  {run['run_dir']}" if run.get("run_dir") else "")]
    w = run["window"]
    if w["start_at"]:
        out.append(f"window     {w['start_at']} → {w['end_at']}  (wall {fmt_duration(w['wall_s'])},"
                   " first schedule to last completion)")
        active = w.get("active_s")
        if active is not None and w["wall_s"] is not None and w["wall_s"] > active + 1.0:
            out.append(f"sending    {fmt_duration(active)}: the sessions' own windows, without "
                       "the gaps between them (rates are over this)")
    if run.get("journal_rows"):
        # A bench cannot be resumed; a run can.
        what = "run it again" if run.get("stages") else "resume it"
        out.append(f"note       {plural(run['journal_rows'], 'row')} read from journal/ (the "
                   f"run is going, or crashed: {what})")
    if run.get("outstanding_jobs"):
        n = run["outstanding_jobs"]
        before = run.get("collect_before")
        jobs = plural(n, "async job")
        out.append(
            f"note       {jobs} not collected yet, so without rows or cost here: "
            f"batchrunner collect {run.get('run_dir') or 'RUN_DIR'}"
            + (f" before {_iso_text(before)}" if before else "")
        )
    rejected = run.get("rejected_input_rows")
    if rejected:
        out.append(f"rejected   {rejected_note(rejected, run.get('run_dir'))}")
    warm = warmup_line(run)
    if warm:
        out.append(f"bench      {warm}")
    out += schedule_lines(run.get("schedule"))
    out += [f"warning    {w}" for w in run.get("warnings") or []]
    return out


def rejected_note(n: int, run_dir: str | None) -> str:
    """What a run's rejected input rows are: never sent, so without a row, and where they are.

    :param n: the count ``run.json`` records (``rejected``).
    :param run_dir: the run directory, to name its ``rejects.jsonl``.
    """
    where = str(PurePath(run_dir) / "rejects.jsonl") if run_dir else "rejects.jsonl"
    return (f"{plural(n, 'input row')} {'was' if n == 1 else 'were'} invalid and never sent: "
            f"no row, so in no figure below; each is in {where} with its reason")


def run_tables(run: dict[str, Any], prices: dict[str, Any], by: Sequence[str]) -> list[Table]:
    """Every table of one run: (bench stages), requests, errors, throughput, latency, tokens,
    cost."""
    groups = run_keys(run, by)
    g = len(groups)
    sections = _sections(run, g)
    o = run["overall"]
    tables: list[Table] = [stage_table(run)] if run.get("stages") else []

    extra = sorted({k for _, s in sections for k in s["status"]} - set(_STATUSES))
    rows = [[*label, _int(s["requests"]), *(_int(s["status"].get(k, 0)) for k in
                                             (*_STATUSES, *extra)), _pct(s["error_rate"])]
            for label, s in sections]
    tables.append(Table("Requests (all rows; error rate = error + timeout + expired, of rows not "
                        "cancelled)",
                        [*groups, "requests", *_STATUSES, *extra, "error rate"], rows, left=g))

    rows = []
    for label, s in sections:
        for e in s["errors"]:
            example = (e["example"] or "").replace("\n", " ")
            if len(example) > 80:
                example = example[:77] + "..."
            rows.append([*label, e["error_type"], _int(e["count"]), _pct(e["share"]),
                         ",".join(e["statuses"]), ",".join(e["http_statuses"]) or "-", example])
    if rows:
        title = ("Errors (rows not ok, by error_type; share: of all rows; example: the first in "
                 "input order)")
    else:  # "every row is ok" of no rows at all read as a clean run
        title = "Errors: none (every row is ok)" if o["requests"] else "Errors: none (no rows)"
    tables.append(Table(
        title,
        [*groups, "error_type", "count", "share", "status", "http", "example"], rows,
        left=g + 1, last_left=True))

    rows = [[*label, _rate(s["throughput"]["requests_per_s"]),
             _rate(s["throughput"]["ok_requests_per_s"]),
             _rate(s["throughput"]["output_tokens_per_s"])] for label, s in sections]
    t = Table("Throughput (req/s: sent rows, over the run's sending time)"
              if not run.get("stages") else
              "Throughput (req/s: sent rows; all: over the run's sending time; each stage: over "
              "its own window, first schedule to last completion)",
              [*groups, "req/s", "ok req/s", "output tok/s"], rows, left=g)
    tl = run.get("timeline")
    if tl:
        t.notes.append(f"over time: {fmt_duration(tl['bucket_s'])} buckets of completed_at; peak "
                       f"{_rate(tl['peak_requests_per_s'])} req/s; requests in flight (sent_at to "
                       f"completed_at) peak {tl['in_flight_peak']:,}; busy "
                       f"{fmt_duration(tl['active_s'])}")
        t.text_notes.append(f"req/s  {_spark(tl['requests_per_s'])}")
        if any(tl["failed"]):
            t.text_notes.append(f"errors {_spark([float(v) for v in tl['failed']])}")
    tables.append(t)

    lat = o["latency"]
    rows = []
    for label, s in sections:
        for m in run["metrics"]:
            d = s["latency"]["metrics"][m]
            rows.append([*label, m, _int(d["n"]), *(fmt_duration(d[k]) for k in (
                "mean", "p50", "p90", "p95", "p99", "max"))])
    t = Table(f"Latency (ok rows only: {lat['rows_used']:,} used, {lat['rows_excluded']:,} not ok "
              "excluded)", [*groups, "metric", "n", "mean", "p50", "p90", "p95", "p99", "max"],
              rows, left=g + 1)
    if not rows:
        t.notes.append("no timing columns in these rows")
    tables.append(t)

    keys = {"input": "input", "output": "output", "cache_write_5m": "cache write 5m",
            "cache_write_1h": "cache write 1h", "cache_read": "cache read"}
    for key, header in (("web_search_requests", "web searches"),
                        ("web_fetch_requests", "web fetches")):
        if o["tokens"].get(key):  # server tools: only when some row used them
            keys[key] = header
    rows = [[*label, *(_int(s["tokens"][k]) for k in keys)] for label, s in sections]
    tables.append(Table(f"Tokens (all rows; {o['tokens']['rows_with_usage']:,} with usage)",
                        [*groups, *keys.values()], rows, left=g))

    version = prices.get("version") or "not installed"
    # The web search column only when a row searched (most runs never do).
    labels = dict(_CATEGORY_LABELS)
    if o["tokens"].get("web_search_requests"):
        labels.update(_FEE_LABELS)
    rows = []
    for m in run["cost_by_model"]:
        c = m["cost"]
        # A model with prices whose fast-mode rows have none shows its priced part, a lower
        # bound (so that the columns add up to the totals), and names the rows left out.
        shown = c["rows_unpriced"] == 0 or m["priced_as"] is not None
        priced_as = m["priced_as"] or "UNPRICED"
        if c["rows_unpriced"] and m["priced_as"]:
            reasons = {u["reason"] for u in c["unpriced_models"]}
            priced_as += (f"; {plural(c['rows_unpriced'], 'row')} UNPRICED"
                          + (" (speed fast: no fast-mode rates)"
                             if reasons == {"no fast-mode rates"} else ""))
        rows.append([m["model"], _int(m["requests"]),
                     *(fmt_usd(c["usd"][k] if shown else None) for k in labels),
                     cost_total_text(c) if shown else "-",
                     fmt_usd(c["per_request_usd"] if shown else None), priced_as])
    c = o["cost"]
    rows.append(["total", _int(o["requests"]), *(fmt_usd(c["usd"][k]) for k in labels),
                 cost_total_text(c), fmt_usd(c["per_request_usd"]), ""])
    t = Table(f"Cost USD by model (all rows; genai-prices {version}, standard rates unless usage "
              "says otherwise; rows without usage cost $0)",
              ["model", "requests", *labels.values(), "total", "per request",
               "priced as"], rows, left=1, last_left=True)
    if c["unpriced_models"]:
        names = ", ".join(f"{u['model']} ({plural(u['rows'], 'row')}, "
                          f"{plural(u['tokens'], 'token')}"
                          + (", speed fast: no fast-mode rates" if u.get("reason") ==
                             "no fast-mode rates" else "") + ")"
                          for u in c["unpriced_models"])
        t.notes.append(f"UNPRICED (cost unknown, left out of the totals): {names}; add them to a "
                       "--prices file")
    if c.get("outstanding_jobs"):
        t.notes.append(f"OUTSTANDING: {plural(c['outstanding_jobs'], 'async job')} not collected "
                       "yet: no rows, so their cost is in no figure here and every total is a "
                       f"lower bound; batchrunner collect {run.get('run_dir') or 'RUN_DIR'}")
    if c.get("retried", {}).get("attempts"):
        t.notes.append(retried_note(c["retried"]))
    if c.get("cut_streams", {}).get("output_tokens_at_least"):
        t.notes.append(cut_streams_note(c["cut_streams"]))
    if run.get("replaced_cost_usd"):
        t.notes.append(replaced_note(run["replaced_cost_usd"]))
    t.notes += _adjustment_notes(c)
    tables.append(t)
    if groups:
        rows = []
        for label, s in sections:
            gc = s["cost"]
            # A group whose rows with usage are all of unpriced models (its priced rows, failed
            # ones without usage, cost $0): its cost is unknown, not $0 in every column.
            if gc["rows_unpriced"] and not gc["usd"]["total"]:
                rows.append([*label, _int(s["requests"]), *("-" for _ in labels), "UNPRICED",
                             "-"])
                continue
            rows.append([*label, _int(s["requests"]), *(fmt_usd(gc["usd"][k]) for k in labels),
                         cost_total_text(gc), fmt_usd(gc["per_request_usd"])])
        tables.append(Table("Cost USD by group (all rows)",
                            [*groups, "requests", *labels.values(), "total",
                             "per request"], rows, left=g))
    return tables


def _adjustment_notes(cost: dict[str, Any]) -> list[str]:
    """What the cost table's rates were adjusted for (rows' ``speed``, ``inference_geo``,
    ``service_tier``), and the estimate warning for Priority Tier rows."""
    adj = cost.get("adjusted_rows") or {}
    notes = []
    if adj.get("fast"):
        notes.append(f"fast mode: {plural(adj['fast'], 'row')} (speed fast) at the model's "
                     "fast-mode rates")
    if adj.get("inference_geo_us"):
        notes.append(f"data residency: {plural(adj['inference_geo_us'], 'row')} with "
                     "inference_geo us at 1.1x token rates")
    if adj.get("batch"):
        notes.append(f"batch: {plural(adj['batch'], 'row')} with service_tier batch at 50% of "
                     "token rates (web searches not discounted)")
    if adj.get("priority_at_list_price"):
        notes.append(f"ESTIMATE: {plural(adj['priority_at_list_price'], 'Priority Tier row')} "
                     "(service_tier priority) priced at list price; Priority Tier is billed "
                     "through capacity commitments, with no public per-token price")
    return notes


def cut_streams_note(cut: dict[str, Any]) -> str:
    """The cost table's note on streams that failed midway: priced from the usage they reported,
    which leaves out the output that came after ``message_start``.

    :param cut: a cost section's ``cut_streams`` (``rows``, ``retried_attempts``,
        ``output_tokens_at_least``).
    :return: the note's text.
    """
    streams = cut["rows"] + (cut.get("retried_attempts") or 0)
    verb = "is" if streams == 1 else "are"
    return (f"UNDERSTATED: {plural(streams, 'stream')} that failed midway {verb} priced "
            "from the usage reported before the failure (message_start's output, "
            f"usually 1 token); at least {plural(cut['output_tokens_at_least'], 'output token')} "
            "more came (content_deltas) and are in no total")


def retried_note(retried: dict[str, Any]) -> str:
    """The cost table's note on usage that failed attempts reported before a retry (or a stop).

    :param retried: a cost section's ``retried`` (``attempts``, ``rows``, ``usd``).
    :return: the note's text.
    """
    text = (f"RETRIED: {fmt_usd(retried['usd'])} of these costs is usage that "
            f"{plural(retried['attempts'], 'failed attempt')} of "
            f"{plural(retried['rows'], 'row')} reported before being sent again or stopped (a "
            "stream cut after message_start is billed); their tokens are in no token column "
            "(retried_usage)")
    if retried.get("unpriced_attempts"):
        text += (f"; {plural(retried['unpriced_attempts'], 'attempt')} of "
                 f"{', '.join(retried['unpriced_models'])} (no prices) in no figure: the totals "
                 "are lower bounds")
    return text


def replaced_note(usd: float) -> str:
    """The cost table's note on rows a resume replaced: billed, in no row any more.

    :param usd: what they had cost (:func:`~batchrunner.report.replaced_cost_usd`).
    :return: the note's text.
    """
    return (f"REPLACED: rows a resume removed to send again (failed with --retry-failed, or "
            f"cancelled) had cost {fmt_usd(usd)} at list prices (run.json): billed, but in no "
            "total here")


def cost_total_text(cost: dict[str, Any]) -> str:
    """A cost total; a lower bound (``>= $x``) when some rows could not be priced or async jobs
    are outstanding."""
    return fmt_usd(cost["total_usd"]) if cost["complete"] else f">= {fmt_usd(cost['usd']['total'])}"


def _run_text(run: dict[str, Any], prices: dict[str, Any], by: Sequence[str]) -> list[str]:
    out = run_header(run)
    for table in run_tables(run, prices, by):
        out.append("")
        out += table.text()
    return out


def _fmt_figure(name: str, value: Any, delta: bool = False, decimals: int = 2) -> str:
    if value is None:
        return "-"
    sign = "+" if delta and value > 0 else ""
    if "usd" in name:
        return sign + fmt_usd(value)
    if name == "error_rate":  # *decimals*: the row's, so that its values and deltas agree
        places = decimals if value else 2  # a plain zero stays 0.00
        return f"{sign}{value * 100:z.{places}f}{'pp' if delta else '%'}"
    if name.endswith(("p50", "p90", "p95", "p99", "max", "mean")):
        return sign + fmt_duration(value)
    if name.endswith("_per_s"):
        return sign + _rate(value)
    return sign + _int(value)


def _delta_pct(pct: float | None, base: Any, value: Any) -> str:
    """A Δ% cell: ``from 0`` when the baseline is 0 and the run is not (no percentage of 0)."""
    if pct is not None:
        # A change too small for one decimal gets two significant digits, never 0.0%; z: a
        # plain zero (no change) reads +0.0%, never -0.0%.
        return f"{pct:+z.{_places(pct, 1)}f}%"
    if base == 0 and value:
        return "from 0"
    return "-"


def comparison_tables(cmp: dict[str, Any]) -> list[Table]:
    """The comparison of several runs: overall figures, cost by model, figures by group."""
    names = cmp["runs"]
    others = names[1:]
    headers = [*names, *(f"Δ {n}" for n in others), *(f"Δ% {n}" for n in others)]

    def rows_of(figures: list[dict[str, Any]], prefix: Sequence[str] = ()) -> list[list[str]]:
        rows = []
        for fig in figures:
            name = fig["figure"]
            # Enough decimals that no value or delta other than 0 shows as 0 (1 error in
            # 400,000 rows against none: 0.00025% → 0.00%, -100.0%, read as a contradiction).
            places = (_decimals([*fig["values"], *fig["delta"]], 2) if name == "error_rate"
                      else 2)
            rows.append([*prefix, name, *(_fmt_figure(name, v, decimals=places)
                                          for v in fig["values"]),
                         *(_fmt_figure(name, d, delta=True, decimals=places)
                           for d in fig["delta"]),
                         *(_delta_pct(p, fig["values"][0], v) for p, v in zip(
                             fig["delta_pct"], fig["values"][1:], strict=True))])
        return rows

    title = f"Figures (baseline {cmp['baseline']}; Δ = run - baseline)"
    unpriced = cmp.get("unpriced") or {}
    outstanding = cmp.get("outstanding_jobs") or {}
    why: dict[str, list[str]] = {}
    for run in names:
        if unpriced.get(run):
            why.setdefault(run, []).append(f"unpriced: {', '.join(unpriced[run])}")
        if outstanding.get(run):
            why.setdefault(run, []).append(
                f"{plural(outstanding[run], 'async job')} outstanding, not collected yet")
    if why:
        title += "; no cost total for " + "; ".join(
            f"{run} ({'; '.join(reasons)})" for run, reasons in why.items())
    tables = [Table(title, ["figure", *headers], rows_of(cmp["overall"]), left=1)]
    rejected = cmp.get("rejected_input_rows") or {}
    if rejected:  # the requests row alone would not say why a run has fewer
        tables[0].notes.append("input rows rejected (invalid, never sent, in no figure above): "
                               + ", ".join(f"{run} {n:,}" for run, n in rejected.items()))
    if cmp["cost_by_model"]:
        rows = []
        for entry in cmp["cost_by_model"]:
            rows += rows_of(entry["figures"], [entry["model"]])
        tables.append(Table("Cost by model", ["model", "figure", *headers], rows,
                            left=2))
    if cmp["groups"]:
        bound = cmp.get("client_bound_stages") or {}
        bound_stages = {stage for stages in bound.values() for stage in stages}
        rows = []
        for grp in cmp["groups"]:
            label = ", ".join(f"{k}={v}" for k, v in grp["key"].items())
            if grp["key"].get("stage") in bound_stages:
                label += CLIENT_BOUND_MARK
            rows += rows_of(grp["figures"], [label])
        table = Table("By group (groups present in every run)",
                      ["group", "figure", *headers], rows, left=2)
        if bound:  # a client-bound stage's difference reads as the gateway's otherwise
            table.notes.append(
                f"{CLIENT_BOUND_MARK.strip()} client-bound (these figures measure the client, "
                "not the gateway): " + "; ".join(
                    f"{run} {', '.join(stages)}" for run, stages in bound.items()))
        tables.append(table)
    return tables


def format_report(report: dict[str, Any]) -> str:
    """The whole report as text: one block per run, then the comparison (several runs).

    :param report: from :func:`batchrunner.report.build_report`.
    """
    prices = report["prices"]
    lines = []
    version = prices.get("version") or "(not installed)"
    p = f"prices     genai-prices {version} ({prices['data']} data)"
    if prices.get("overrides"):
        ov = prices["overrides"]
        p += f", overrides {ov['path']} ({', '.join(ov['models'])})"
    lines.append(p)
    if prices.get("error"):
        lines.append(f"warning    {prices['error']}")
    for run in report["runs"]:
        lines.append("")
        lines += _run_text(run, prices, report["group_by"])
    if "comparison" in report:
        lines.append("")
        lines.append(f"== Comparison of {len(report['runs'])} runs")
        for table in comparison_tables(report["comparison"]):
            lines.append("")
            lines += table.text()
    return "\n".join(lines)


def rate_limited_lines(limited: dict[str, Any] | None) -> list[str]:
    """What the gateway's 429s did to this session: how many were sent again, and how far each
    rate-limited model was slowed down."""
    if not limited or not limited.get("attempts"):
        return []
    models = limited.get("models") or {}
    slowest = ", ".join(
        f"{model} down to {m['fewest_in_flight']} in flight"
        if m.get("fewest_in_flight") is not None else f"{model} not slowed down"
        for model, m in sorted(models.items(), key=lambda kv: -(kv[1].get("attempts") or 0))[:3]
    )
    waited = limited.get("waited_out")
    which = ("" if waited is None or waited >= limited["attempts"]
             else f"{waited:,} of them ")
    return [f"limited    {plural(limited['attempts'], 'attempt')} answered 429 (rate limited), "
            f"{which}waited out without using up retries, this session ({slowest})"]


def format_short(summary: dict[str, Any]) -> str:
    """The closing block of ``run`` from :func:`batchrunner.report.summarize_table`."""
    lines = []
    status = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["status"].items())) or "none"
    outstanding = summary.get("outstanding_jobs") or 0
    jobs = f"; {plural(outstanding, 'async job')} outstanding, no rows yet"
    lines.append(f"requests   {summary['requests']:,}  ({status}{jobs if outstanding else ''})")
    if summary["error_types"]:
        top = sorted(summary["error_types"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("errors     " + ", ".join(f"{k} {v:,}" for k, v in top))
    lines += rate_limited_lines(summary.get("rate_limited"))
    lines += schedule_lines(summary.get("schedule"))
    if summary["requests_per_s"] is not None:
        span = summary.get("span_s")
        gaps = (f" of sending (the rows span {fmt_duration(span)}, with the gaps between "
                "sessions)" if span and span > summary["wall_s"] + 1.0 else "")
        lines.append(
            f"throughput {summary['requests_per_s']:,.1f} req/s, "
            f"{summary['output_tokens_per_s']:,.0f} output tokens/s over "
            f"{fmt_duration(summary['wall_s'])}{gaps}"
        )
    for key, label in (("latency_s", "latency"), ("ttft_s", "TTFT"), ("total_s", "total")):
        q = summary.get(key)
        if q:
            lines.append(
                f"{label:<10} p50 {fmt_duration(q['p50'])}  p90 {fmt_duration(q['p90'])}  "
                f"p99 {fmt_duration(q['p99'])}  max {fmt_duration(q['max'])}  (ok rows: {q['n']:,})"
            )
    lag = summary.get("loop_lag") or {}
    # p99 over the bound, and more than a blip: a short run's p99 is its worst sample.
    if (lag.get("p99_s") or 0) > LOOP_LAG_NOTE_S and (lag.get("over_10ms") or 0) >= 3:
        lines.append(f"client     LATE: batchrunner's event loop ran late (p99 "
                     f"{fmt_duration(lag['p99_s'])}, max {fmt_duration(lag['max_s'])}, this "
                     "session): latency_s, ttfb_s and ttft_s include up to that much of its own "
                     "delay; lower -c or --rate, or split the run over processes")
    t = summary["tokens"]
    lines.append(
        f"tokens     input {t['input']:,}  output {t['output']:,}  "
        f"cache write {t['cache_creation_input']:,}  cache read {t['cache_read_input']:,}"
    )
    cost = summary.get("cost")
    if cost and cost.get("prices"):
        usd = cost["usd"]
        parts = (f"input {fmt_usd(usd['input'])}, output {fmt_usd(usd['output'])}, cache write "
                 f"{fmt_usd(usd['cache_write_5m'] + usd['cache_write_1h'])}, cache read "
                 f"{fmt_usd(usd['cache_read'])}")
        if usd.get("web_search"):  # so that the parts add up to the total
            parts += f", web search {fmt_usd(usd['web_search'])}"
        if cost["complete"]:
            lines.append(f"cost       {fmt_usd(cost['total_usd'])}  ({parts}; {cost['prices']})")
        else:
            missing = []
            if cost["unpriced_models"]:
                fast = set(cost.get("unpriced_fast_models") or ())
                names = [f"{m} (its speed-fast rows: no fast-mode rates)" if m in fast else m
                         for m in cost["unpriced_models"]]
                missing.append(f"unpriced: {', '.join(names)}")
            if outstanding:
                missing.append(
                    f"without the {plural(outstanding, 'outstanding job')} (priced once collected)"
                )
            lines.append(f"cost       >= {fmt_usd(cost['priced_usd'])}  ({parts}; "
                         f"{cost['prices']}); {'; '.join(missing)}")
        cut = cost.get("cut_streams") or {}
        if cut.get("output_tokens_at_least"):
            streams = cut["rows"] + (cut.get("retried_attempts") or 0)
            lines.append(f"cut        {plural(streams, 'stream')} failed midway: at least "
                         f"{plural(cut['output_tokens_at_least'], 'output token')} more came "
                         "than their usage says (not priced)")
        retried = cost.get("retried") or {}
        if retried.get("attempts"):
            unpriced = retried.get("unpriced_attempts") or 0
            lines.append(f"retried    {fmt_usd(retried['usd'])} of it for "
                         f"{plural(retried['attempts'], 'failed attempt')} sent again or "
                         "stopped (the usage they reported is billed; its tokens are not in "
                         "the tokens line)"
                         + (f"; {unpriced:,} of them unpriced, not counted" if unpriced else ""))
        if cost.get("replaced_usd"):
            lines.append(f"replaced   {fmt_usd(cost['replaced_usd'])} more, billed for rows a "
                         "resume removed to send again (failed or cancelled): in no figure above")
    return "\n".join(lines)
