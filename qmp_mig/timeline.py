# SPDX-License-Identifier: GPL-2.0-or-later
"""One time axis for everything a test saw: QMP commands, replies and events,
kernel-side VFIO state arcs, guest agent results and the test's own notes,
from every QEMU involved, as :class:`Mark` s on the controller's clock; drawn
side by side as text and as an SVG picture.

Times taken on a lab host (QEMU's event timestamps) are brought onto the
controller's clock by subtracting ``offset`` = host clock - controller clock;
:func:`host_clock_offset` estimates it from a QMP transcript.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("command", "reply", "event", "kernel", "guest", "note")


@dataclass(frozen=True, order=True)
class Mark:
    """One thing that happened, at one time, on one side."""

    time: float  # seconds since the epoch, the controller's clock
    vm: str  # a QEMU instance name ("source", "destination", ...) or "test"
    kind: str  # one of KINDS
    text: str  # one short line
    failed: bool = False  # an error reply, a failed kernel arc, a failed check


# --- reading ---------------------------------------------------------------

_COMMAND_CHARS = 60
_ERROR_CHARS = 120


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line, whatever QEMU put in it
    return text if len(text) <= width else text[: width - 1] + "…"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _command_text(message: dict[str, Any]) -> str:
    arguments = message.get("arguments") or {}
    words = [str(message.get("execute", "?"))]
    if isinstance(arguments, dict):
        words += [f"{key}={_compact(value)}" for key, value in arguments.items()]
    else:
        words.append(_compact(arguments))
    return _clip(" ".join(words), _COMMAND_CHARS)


def _error_desc(message: dict[str, Any]) -> str:
    # The brief's shape nests {"class", "desc"} under "error"; qmp.py logs
    # kind "error" with "error" = the class and "desc" beside it.
    error = message.get("error")
    if isinstance(error, dict):
        return str(error.get("desc") or error.get("class") or "error")
    return str(message.get("desc") or error or "error")


def event_text(name: str, data: dict[str, Any] | None) -> str:
    """One line for a QMP event, as both transcripts and events files show it."""
    data = data or {}
    if name == "VFIO_MIGRATION":
        return f"VFIO_MIGRATION {data.get('device-id', '?')} {data.get('device-state', '?')}"
    if name == "MIGRATION":
        return f"MIGRATION {data.get('status', '?')}"
    return _clip(f"{name} {_compact(data)}" if data else name, _COMMAND_CHARS)


def _vm_of(path: Path) -> str:
    return path.name.split(".", 1)[0]  # "source.qmp.jsonl" -> "source"


def _is_query(message: Any) -> bool:
    return isinstance(message, dict) and str(message.get("execute", "")).startswith("query-")


def marks_from_transcript(path: Path, *, skip_queries: bool = True, include_events: bool = True) -> list[Mark]:
    """Marks from a QMP transcript (``<vm>.qmp.jsonl``, written by qmp.py).

    ``skip_queries`` drops query-* commands whose reply was not an error (they
    are polls, not steps). ``include_events=False`` leaves events out, for
    when the ``<vm>.events.json`` file supplies them instead.
    """
    marks: list[Mark] = []
    pending_queries: dict[tuple[str, str], list[Mark]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short when QEMU or the test died: keep the rest
        if not isinstance(record, dict):
            continue
        t, vm, kind = float(record.get("t", 0.0)), str(record.get("vm", _vm_of(path))), record.get("kind")
        message = record.get("message")
        body = message if isinstance(message, dict) else {}
        name = str(body.get("execute", "?"))
        mark: Mark
        if kind == "greeting":
            mark = Mark(t, vm, "note", "QMP connected")
        elif kind == "command":
            mark = Mark(t, vm, "command", _command_text(body))
            if skip_queries and _is_query(body):
                pending_queries.setdefault((vm, name), []).append(mark)
                continue
        elif kind in ("reply", "error") and ("error" in body or kind == "error"):
            mark = Mark(t, vm, "reply", _clip(f"{name}: {_error_desc(body)}", _ERROR_CHARS), failed=True)
        elif kind == "reply":
            mark = Mark(t, vm, "reply", f"{name} ok")
            if skip_queries and _is_query(body) and pending_queries.get((vm, name)):
                pending_queries[(vm, name)].pop(0)
                continue
        elif kind == "timeout":
            mark = Mark(t, vm, "reply", f"{name}: no reply in {body.get('seconds', '?')} s", failed=True)
        elif kind == "event":
            if not include_events:
                continue
            event, data = str(body.get("event", "?")), body.get("data")
            mark = Mark(t, vm, "event", event_text(event, data))
        else:
            mark = Mark(t, vm, "note", _clip(f"{kind} {_compact(message)}", _COMMAND_CHARS))
        if mark.failed and _is_query(body) and pending_queries.get((vm, name)):
            marks.append(pending_queries[(vm, name)].pop(0))  # a failed query is a step after all
        marks.append(mark)
    # A query that never got any reply is kept: the hang is the story.
    marks += [mark for waiting in pending_queries.values() for mark in waiting]
    return sorted(marks, key=lambda m: m.time)


def marks_from_events(path: Path, offset: float = 0.0) -> list[Mark]:
    """Marks from an events file (``<vm>.events.json``), whose times are on the
    host's clock; ``offset`` = host clock - controller clock is subtracted."""
    records = json.loads(path.read_text())
    marks = []
    for record in records:
        text = event_text(str(record.get("event", "?")), record.get("data"))
        marks.append(Mark(float(record["time"]) - offset, str(record.get("vm", _vm_of(path))), "event", text))
    return sorted(marks, key=lambda m: m.time)


def host_clock_offset(transcript: Path) -> float | None:
    """Host clock - controller clock for the QEMU of one transcript, or None
    without events. Each event carries QEMU's (host) timestamp and the time
    the controller logged it; delivery only ever adds delay, so the largest
    difference is the best estimate."""
    best: float | None = None
    for line in transcript.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            stamp = record["message"]["timestamp"]
            host = stamp["seconds"] + stamp["microseconds"] / 1e6
            difference = host - float(record["t"])
        except (ValueError, KeyError, TypeError):
            continue
        best = difference if best is None else max(best, difference)
    return best


def read_marks(path: Path) -> list[Mark]:
    """Marks back from the ``<name>.json`` that :func:`write_timeline` wrote."""
    return [Mark(**record) for record in json.loads(path.read_text())]


# --- ordering --------------------------------------------------------------


def _in_time_order(marks: Iterable[Mark]) -> list[Mark]:
    return sorted(marks, key=lambda m: m.time)  # stable: equal times keep their order


def vm_order(marks: Sequence[Mark]) -> list[str]:
    """Columns / bands: "test", then "source", then the rest as they appear."""
    seen = list(dict.fromkeys(m.vm for m in _in_time_order(marks)))
    first = [vm for vm in ("test", "source") if vm in seen]
    return first + [vm for vm in seen if vm not in first]


# --- text ------------------------------------------------------------------

_CELL_CHARS = 48


def _cell(mark: Mark) -> str:
    return _clip(("!! " if mark.failed else "") + f"{mark.kind}: {mark.text}", _CELL_CHARS)


def render_text(marks: Sequence[Mark], title: str = "") -> str:
    """Side by side: "+seconds" since the first mark, then one column per vm."""
    ordered = _in_time_order(marks)
    lines = [title] if title else []
    if not ordered:
        return "\n".join([*lines, "(no marks)"]) + "\n"
    vms = vm_order(ordered)
    start = ordered[0].time
    rows = [[f"+{m.time - start:.3f}"] + [_cell(m) if vm == m.vm else "" for vm in vms] for m in ordered]
    header = ["+s", *vms]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        # Seconds right-aligned so the decimal points line up.
        return " | ".join([cells[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    lines += [line(header), "-+-".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    return "\n".join(lines) + "\n"


# --- picture ---------------------------------------------------------------

_ROWS = ("qmp", "event", "kernel", "guest", "note")  # command and reply share "qmp"
_ROW_OF = {"command": "qmp", "reply": "qmp", "event": "event", "kernel": "kernel", "guest": "guest"}
_STYLE = {  # kind: (colour, marker)
    "command": ("#1f77b4", ">"),
    "reply": ("#17becf", "<"),
    "event": ("#2ca02c", "o"),
    "kernel": ("#9467bd", "s"),
    "guest": ("#ff7f0e", "D"),
    "note": ("#7f7f7f", "o"),
}
_FAILED = "#d62728"
_LABEL_PT = 7.0
_LABEL_CHARS = 34
_FAILED_LABEL_CHARS = 60
_CHAR_IN = _LABEL_PT * 0.55 / 72  # width of one label character, inches
_GAP_IN = _LABEL_PT * 1.5 / 72  # distance between neighbouring (vertical) labels
_ROW_IN = 0.38  # a row without labels
_LEADER_IN = 0.32  # room for the leader lines that fan labels out
_MAX_WIDTH_IN = 40.0
_MIGRATION_ENDS = {f"MIGRATION {status}" for status in ("completed", "failed", "cancelled")}


def _label(mark: Mark) -> str | None:
    """What is written next to a mark in the picture (None: just the marker)."""
    if mark.failed:
        return _clip(mark.text, _FAILED_LABEL_CHARS)  # what went wrong deserves the room
    if mark.kind == "event":
        # Device states, and where a migration ended (a cancel test expects
        # "MIGRATION failed" on the abandoned destination: not red).
        if mark.text.startswith("VFIO_MIGRATION "):
            text = mark.text.removeprefix("VFIO_MIGRATION ")
        elif mark.text in _MIGRATION_ENDS:
            text = mark.text
        else:
            return None
    elif mark.kind == "command":
        text = mark.text.split(" ", 1)[0]  # the command's name; its arguments are in the text
    elif mark.kind == "reply" or mark.text == "QMP connected":
        return None
    else:
        text = mark.text
    return _clip(text, _LABEL_CHARS)


def _spread(wanted: Sequence[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions, each as near its wanted (sorted) position as it can be
    while staying ``gap`` from its neighbours and within [lo, hi]: crowded
    labels form a cluster centred on the marks it labels."""

    def start_of(count: int, total: float) -> float:
        start = total / count - gap * (count - 1) / 2
        return max(lo, min(start, hi - gap * (count - 1)))

    clusters: list[tuple[float, int, float]] = []  # (first position, count, sum of wanted)
    for x in wanted:
        count, total = 1, x
        start = start_of(count, total)
        while clusters and clusters[-1][0] + gap * clusters[-1][1] > start + 1e-12:
            _, previous_count, previous_total = clusters.pop()
            count, total = count + previous_count, total + previous_total
            start = start_of(count, total)
        clusters.append((start, count, total))
    return [start + gap * i for start, count, _ in clusters for i in range(count)]


def render_svg(marks: Sequence[Mark], path: Path, title: str = "") -> None:
    """The timeline as a picture: one band per vm, one row per kind of mark."""
    import matplotlib  # lazily: importing this module must stay cheap

    matplotlib.use("Agg")
    figure = _draw(marks, title)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qmp-mig"}):  # text stays text
        figure.savefig(path, format="svg", bbox_inches="tight", metadata={"Title": title or None, "Date": None})


def _draw(marks: Sequence[Mark], title: str) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ordered = _in_time_order(marks)
    start = ordered[0].time if ordered else 0.0
    span = (ordered[-1].time - start) if ordered else 0.0
    vms = vm_order(ordered)

    # Rows (vm, row) top to bottom, with their marks and labels.
    rows: list[tuple[str, str, list[Mark], list[tuple[float, str, Mark]]]] = []
    for vm in vms:
        for row in _ROWS:
            in_row = [m for m in ordered if m.vm == vm and _ROW_OF.get(m.kind, "note") == row]
            if in_row:
                labels = [(m.time - start, text, m) for m in in_row if (text := _label(m))]
                rows.append((vm, row, in_row, labels))

    # Sizes in inches: wide enough for the busiest row's labels side by side.
    busiest = max((len(labels) for *_, labels in rows), default=0)
    axes_w = min(_MAX_WIDTH_IN - 2.5, max(10.0, busiest * _GAP_IN * 1.2, len(ordered) * 0.06))
    heights = [
        _ROW_IN + (_LEADER_IN + max(len(t) for _, t, _ in labels) * _CHAR_IN + 0.1 if labels else 0.0)
        for *_, labels in rows
    ]
    axes_h = max(sum(heights), _ROW_IN)
    left, right, bottom, top = 1.9, 0.4, 0.6, 0.9
    fig = Figure(figsize=(left + axes_w + right, bottom + axes_h + top))
    ax = fig.add_axes((left / fig.get_figwidth(), bottom / fig.get_figheight(),
                       axes_w / fig.get_figwidth(), axes_h / fig.get_figheight()))
    pad = max(span * 0.02, 0.05)
    x_lo, x_hi = -pad, span + pad
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(0, axes_h)  # y is in inches, so label sizes can be planned
    x_per_in = (x_hi - x_lo) / axes_w

    ticks: list[float] = []
    tick_labels: list[str] = []
    band_of: dict[str, list[float]] = {}
    cursor = axes_h
    for (vm, row, in_row, labels), height in zip(rows, heights):
        base = cursor - height + 0.19  # markers near the bottom of the row, labels above
        band_of.setdefault(vm, []).extend([cursor - height, cursor])
        cursor -= height
        ticks.append(base)
        tick_labels.append(row)
        ax.axhline(base, color="#cccccc", linewidth=0.6, zorder=1)

        # How long each command waited for its reply: a bar from one to the other.
        waiting: dict[str, list[float]] = {}
        for m in in_row:
            name = m.text.split(" ", 1)[0].rstrip(":")
            if m.kind == "command":
                waiting.setdefault(name, []).append(m.time - start)
            elif m.kind == "reply" and waiting.get(name):
                ax.plot([waiting[name].pop(0), m.time - start], [base, base], color=_STYLE["command"][0],
                        linewidth=3, alpha=0.35, solid_capstyle="butt", zorder=2)

        for kind in KINDS + tuple(sorted({m.kind for m in in_row} - set(KINDS))):
            for failed in (False, True):
                xs = [m.time - start for m in in_row if m.kind == kind and m.failed == failed]
                if not xs:
                    continue
                colour, marker = _STYLE.get(kind, _STYLE["note"])
                ax.plot(xs, [base] * len(xs), linestyle="none", zorder=4 if failed else 3,
                        marker="X" if failed else marker, markersize=8 if failed else 5,
                        color=_FAILED if failed else colour, markeredgewidth=0.4,
                        markeredgecolor="white" if not failed else _FAILED, alpha=0.9)

        # Labels fanned out sideways by leader lines, standing upright, so a
        # burst of marks within a few milliseconds still reads one by one.
        placed = _spread([x for x, _, _ in labels], _GAP_IN * x_per_in, x_lo, x_hi)
        for (x, text, m), lx in zip(labels, placed):
            colour = _FAILED if m.failed else "#333333"
            ax.plot([x, x, lx, lx], [base, base + 0.1, base + _LEADER_IN - 0.04, base + _LEADER_IN],
                    color=_FAILED if m.failed else "#999999", linewidth=0.5, zorder=2)
            ax.text(lx, base + _LEADER_IN + 0.02, text, rotation=90, ha="center", va="bottom",
                    fontsize=_LABEL_PT, color=colour, fontweight="bold" if m.failed else "normal")

    # Bands: shaded alternately, named in the left margin.
    for i, vm in enumerate(vms):
        low, high = min(band_of[vm]), max(band_of[vm])
        ax.axhspan(low, high, color="#f2f5fa" if i % 2 == 0 else "#ffffff", zorder=0)
        ax.axhline(low, color="#888888", linewidth=0.8, zorder=1)
        ax.annotate(vm, xy=(0, (low + high) / 2), xycoords=ax.get_yaxis_transform(), xytext=(-48, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=10, fontweight="bold")

    ax.set_yticks(ticks, tick_labels, fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("seconds since the first mark")
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    t0 = datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if ordered else "-"
    # Title line on top, the legend between it and the bands.
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold", pad=22)
    ax.set_title(f"0 s = {t0} (controller clock), {len(ordered)} marks", loc="right", fontsize=8,
                 color="#555555", pad=22)
    kinds_seen = [k for k in KINDS if any(m.kind == k for m in ordered)]
    handles = [Line2D([], [], linestyle="none", marker=_STYLE[k][1], color=_STYLE[k][0], label=k) for k in kinds_seen]
    if any(m.failed for m in ordered):
        handles.append(Line2D([], [], linestyle="none", marker="X", color=_FAILED, label="failed"))
    if handles:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(handles),
                  fontsize=8, frameon=False, borderaxespad=0.2, handletextpad=0.2, columnspacing=1.0)
    return fig


def write_timeline(
    marks: Sequence[Mark], directory: Path, name: str = "timeline", title: str = "", svg: bool = True
) -> tuple[Path, Path]:
    """``<name>.txt``, ``<name>.json`` and (``svg``) ``<name>.svg`` in ``directory``
    (titled ``title``, else ``name``); returns (txt, svg). Without ``svg`` the picture
    is left to :func:`draw_missing_svg`: drawing costs seconds (matplotlib), paid once
    per report rather than once per test."""
    directory.mkdir(parents=True, exist_ok=True)
    ordered = _in_time_order(marks)
    text, picture = directory / f"{name}.txt", directory / f"{name}.svg"
    text.write_text(render_text(ordered, title=title or name))
    if svg:
        render_svg(ordered, picture, title=title or name)
    (directory / f"{name}.json").write_text(json.dumps([asdict(m) for m in ordered], indent=1) + "\n")
    return text, picture


def draw_missing_svg(directory: Path, name: str = "timeline") -> Path | None:
    """``<name>.svg`` drawn from ``<name>.json`` when only the latter was written;
    the picture, or None without a timeline."""
    picture, marks = directory / f"{name}.svg", directory / f"{name}.json"
    if not picture.exists() and marks.exists():
        render_svg(read_marks(marks), picture, title=name)
    return picture if picture.exists() else None
