# SPDX-License-Identifier: GPL-2.0-or-later
"""An HTML page for one Avocado job: the counts, a table of tests, and per
test its one-line summary, timeline picture and links to every artifact.

The page is self-contained (inline CSS, nothing fetched) and links only by
relative paths, so the job directory can be copied or served as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .checks import describe_not_run, not_run
from .conformance import DeviceReport, Result, Verdict
from .timeline import draw_missing_svg

_NO_REASON = {"", "<unknown>", "None"}  # what Avocado puts in fail_reason for a pass


@dataclass(frozen=True)
class _File:
    name: str
    href: str
    size: str


@dataclass
class _Test:
    number: str
    anchor: str
    name: str
    short_name: str
    status: str
    time: str
    reason: str
    fail_reason: str
    whiteboard: str
    summary: str
    tags: list[str]
    not_run: str = ""  # optional checks that could not run, and why
    timeline_svg: str | None = None
    timeline_txt: str | None = None
    logs: list[_File] = field(default_factory=list)
    artifacts: list[_File] = field(default_factory=list)
    logdir_found: bool = False
    conformance_counts: str = ""  # a conformance test's device: checks passed, failed, not run
    conformance: list[Result] = field(default_factory=list)  # its failed and not-run checks


def expected_failure(record: dict[str, Any]) -> bool:
    """A scenario reports a known device bug by cancelling with this prefix
    (see MigrationTest.known_issue in qmp_mig/scenario.py)."""
    return record.get("status") == "CANCEL" and str(record.get("fail_reason", "")).startswith("expected failure")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return "-"  # Avocado writes -1 for a test that never ran
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    return f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB"


def _short_name(name: str) -> str:
    # "/work/main/avocado_tests/test_x.py:VfioMigration.test_migrate;variant" -> "VfioMigration.test_migrate;variant"
    return name.rsplit(":", 1)[-1] if ":" in name else name


def _tags(tags: Any) -> list[str]:
    if isinstance(tags, dict):
        return [key if not values else f"{key}:{','.join(sorted(map(str, values)))}" for key, values in sorted(tags.items())]
    if isinstance(tags, list | tuple | set):
        return sorted(map(str, tags))
    return []


def _logdir(job: Path, recorded: Any) -> Path | None:
    """The test's directory: as recorded, or under this job's test-results/
    when the job directory was moved or copied since Avocado wrote the path."""
    if not recorded:
        return None
    path = Path(str(recorded))
    if not path.is_absolute():
        path = job / path
    if path.is_dir():
        return path.resolve()
    moved = job / "test-results" / path.name
    return moved.resolve() if moved.is_dir() else None


def _href(target: Path, job: Path) -> str:
    # Relative to report.html (which lives in job); quoted, so a ':' or ';' in
    # a test directory's name is not taken for a URL scheme or parameter.
    return quote(Path(os.path.relpath(target, job)).as_posix())


def _file(path: Path, name: str, job: Path) -> _File:
    return _File(name=name, href=_href(path, job), size=_size(path.stat().st_size))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _test(job: Path, index: int, record: dict[str, Any], base: Path | None = None) -> _Test:
    """One test's entry; links are relative to ``base`` (default: the job directory)."""
    links = base or job
    name = str(record.get("name") or record.get("id") or f"test {index}")
    test_id = str(record.get("id") or "")
    number = test_id.split("-", 1)[0] if test_id.split("-", 1)[0].isdigit() else str(index)
    status = str(record.get("status") or "UNKNOWN").upper()
    fail_reason = str(record.get("fail_reason") or "")
    fail_reason = "" if fail_reason.strip() in _NO_REASON else fail_reason.strip()
    if expected_failure(record):
        status = "XFAIL"
    logdir = _logdir(job, record.get("logdir"))
    whiteboard = str(record.get("whiteboard") or "").strip()
    if not whiteboard and logdir:
        whiteboard = _read(logdir / "whiteboard")
    reason = _first_line(fail_reason) if status != "PASS" and fail_reason else _first_line(whiteboard)
    test = _Test(
        number=number, anchor=f"test-{number}", name=name, short_name=_short_name(name), status=status,
        time=_duration(record.get("time_elapsed", record.get("time"))), reason=reason,
        fail_reason=fail_reason if status != "PASS" else "", whiteboard=whiteboard, summary="",
        tags=_tags(record.get("tags")),
    )
    if logdir is None:
        return test
    test.logdir_found = True
    artifacts = logdir / "artifacts"
    test.summary = _first_line(_read(artifacts / "summary.txt"))
    test.not_run = describe_not_run(not_run(logdir))
    if (artifacts / "conformance.json").is_file():
        device = DeviceReport.from_json(json.loads((artifacts / "conformance.json").read_text()))
        counts = device.counts()
        test.conformance_counts = (
            f"{device.device} ({device.flags}): {counts[Verdict.PASS]} checks passed, {counts[Verdict.FAIL]} failed, "
            f"{counts[Verdict.SKIP]} could not run; {device.seconds:.1f} s (the checks {device.checks_seconds:.1f} s)")
        test.conformance = [r for r in device.results if r.verdict != Verdict.PASS]
    if artifacts.is_dir() and draw_missing_svg(artifacts):
        test.timeline_svg = _href(artifacts / "timeline.svg", links)
    if (artifacts / "timeline.txt").is_file():
        test.timeline_txt = _href(artifacts / "timeline.txt", links)
    test.logs = [_file(logdir / log, log, links) for log in ("debug.log", "whiteboard") if (logdir / log).is_file()]
    if artifacts.is_dir():
        test.artifacts = [
            _file(path, path.relative_to(artifacts).as_posix(), links)
            for path in sorted(artifacts.rglob("*")) if path.is_file()
        ]
    return test


_COUNTS = (  # label, keys Avocado has used for it
    ("pass", ("pass",)), ("fail", ("fail", "failures")), ("error", ("errors", "error")),
    ("skip", ("skip",)), ("cancel", ("cancel",)), ("warn", ("warn",)), ("interrupt", ("interrupt",)),
)


def _counts(results: dict[str, Any]) -> list[tuple[str, int]]:
    counts = []
    for label, keys in _COUNTS:
        value = next((results[key] for key in keys if isinstance(results.get(key), int)), 0)
        counts.append((label, value))
    return counts


_TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qmp-mig {{ short_id }}: {{ verdict }}</title>
<style>
:root { --pass: #1a7f37; --fail: #cf222e; --error: #a40e26; --skip: #6e7781; --cancel: #6e7781;
        --warn: #9a6700; --interrupt: #8250df; --unknown: #57606a; --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 1.5rem 2rem 3rem; color: #1f2328; background: #fff;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.25rem; margin: 0; display: flex; gap: .6rem; align-items: center; flex-wrap: wrap; }
h3 { font-size: .95rem; margin: 1rem 0 .3rem; color: #57606a; text-transform: uppercase; letter-spacing: .04em; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .88em; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: #57606a; margin: 0 0 1rem; }
.counts { display: flex; gap: .5rem; flex-wrap: wrap; margin: 0 0 1.5rem; }
.count { border: 1px solid var(--line); border-radius: 8px; padding: .4rem .9rem; min-width: 5.5rem; background: var(--soft); }
.count b { display: block; font-size: 1.4rem; }
.count.zero { opacity: .45; }
.count.pass b { color: var(--pass); } .count.fail b { color: var(--fail); } .count.error b { color: var(--error); }
.count.warn b { color: var(--warn); } .count.interrupt b { color: var(--interrupt); }
.status { display: inline-block; min-width: 4.8rem; text-align: center; padding: .05rem .5rem; border-radius: 999px;
          color: #fff; font-weight: 600; font-size: .8rem; letter-spacing: .03em; background: var(--unknown); }
.s-PASS { background: var(--pass); } .s-FAIL { background: var(--fail); } .s-ERROR { background: var(--error); }
.s-SKIP { background: var(--skip); } .s-CANCEL { background: var(--cancel); } .s-WARN { background: var(--warn); }
.s-INTERRUPTED, .s-INTERRUPT { background: var(--interrupt); } .s-XFAIL { background: #0a7ea4; }
table { border-collapse: collapse; width: 100%; margin-bottom: 2rem; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); font-size: .85rem; color: #57606a; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr:hover td { background: #fafbfc; }
section.test { border: 1px solid var(--line); border-left: 6px solid var(--unknown); border-radius: 8px;
               padding: 1rem 1.2rem; margin: 0 0 1.5rem; }
section.b-PASS { border-left-color: var(--pass); } section.b-FAIL { border-left-color: var(--fail); }
section.b-ERROR { border-left-color: var(--error); } section.b-WARN { border-left-color: var(--warn); }
section.b-SKIP, section.b-CANCEL { border-left-color: var(--skip); }
.summary { font-size: 1.05rem; font-weight: 600; margin: .5rem 0 0; }
.fullname { color: #57606a; margin: .2rem 0 0; word-break: break-all; }
.tag { display: inline-block; background: #ddf4ff; color: #0550ae; border-radius: 999px; padding: 0 .55rem;
       font-size: .8rem; margin: .3rem .3rem 0 0; }
pre.reason { background: #fff5f5; border: 1px solid #ffcecb; border-radius: 6px; padding: .6rem .8rem;
             white-space: pre-wrap; margin: .7rem 0 0; }
.whiteboard { margin: .5rem 0 0; }
.notrun { margin: .5rem 0 0; color: #8a5a00; font-weight: bold; }
.timeline { overflow: auto; max-height: 85vh; border: 1px solid var(--line); border-radius: 6px; margin-top: .4rem; background: #fff; }
.timeline img { display: block; max-width: none; }
.none { color: #8c959f; font-style: italic; }
ul.files { columns: 3 18rem; list-style: none; padding: 0; margin: 0; }
ul.files li { padding: .1rem 0; break-inside: avoid; }
.size { color: #8c959f; font-size: .8rem; }
footer { color: #8c959f; font-size: .8rem; margin-top: 2rem; }
</style>
</head>
<body>
<header>
<h1>qmp-mig <code>{{ short_id }}</code></h1>
<p class="meta">{{ job_name }}{% if job_id %} · id <code>{{ job_id }}</code>{% endif %}{% if start %} · started {{ start }}{% endif %} · {{ total_time }}</p>
<div class="counts">
<div class="count"><b>{{ total }}</b>tests</div>
{% for label, value in counts %}
<div class="count {{ label }}{% if not value %} zero{% endif %}"><b>{{ value }}</b>{{ label }}</div>
{% endfor %}
</div>
</header>

{% if tests %}
<table>
<thead><tr><th>#</th><th>test</th><th>status</th><th>time</th><th>reason / result</th></tr></thead>
<tbody>
{% for t in tests %}
<tr>
<td class="num">{{ t.number }}</td>
<td><a href="#{{ t.anchor }}">{{ t.short_name }}</a></td>
<td><span class="status s-{{ t.status }}">{{ t.status }}</span></td>
<td class="num">{{ t.time }}</td>
<td>{{ t.reason }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="none">This job has no tests in results.json.</p>
{% endif %}

{% for t in tests %}
<section class="test b-{{ t.status }}" id="{{ t.anchor }}">
<h2><span class="status s-{{ t.status }}">{{ t.status }}</span> {{ t.number }}. {{ t.short_name }} <span class="size">{{ t.time }}</span></h2>
{% if t.summary %}<p class="summary">{{ t.summary }}</p>{% endif %}
<p class="fullname mono">{{ t.name }}</p>
{% if t.tags %}<div>{% for tag in t.tags %}<span class="tag">{{ tag }}</span>{% endfor %}</div>{% endif %}
{% if t.fail_reason %}<pre class="reason">{{ t.fail_reason }}</pre>{% endif %}
{% if t.whiteboard %}<p class="whiteboard">{{ t.whiteboard }}</p>{% endif %}
{% if t.not_run %}<p class="notrun">{{ t.not_run }}</p>{% endif %}
{% if t.conformance_counts %}
<h3>conformance</h3>
<p>{{ t.conformance_counts }}</p>
{% if t.conformance %}
<table>
<thead><tr><th>check</th><th>verdict</th><th>call</th><th>expected</th><th>observed</th></tr></thead>
<tbody>
{% for r in t.conformance %}
<tr><td>{{ r.check }}</td><td><span class="status s-{{ r.verdict.value | upper }}">{{ r.verdict.value }}</span></td>
<td class="mono">{{ r.call }}</td><td>{{ r.expected }}</td><td>{{ r.observed }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
{% endif %}

<h3>timeline</h3>
{% if t.timeline_svg %}
<div class="timeline"><a href="{{ t.timeline_svg }}"><img src="{{ t.timeline_svg }}" alt="timeline of {{ t.short_name }}" loading="lazy"></a></div>
<p>{% if t.timeline_txt %}<a href="{{ t.timeline_txt }}">timeline as text</a> · {% endif %}<a href="{{ t.timeline_svg }}">picture on its own</a></p>
{% elif t.timeline_txt %}
<p><a href="{{ t.timeline_txt }}">timeline as text</a></p>
{% else %}
<p class="none">no timeline recorded</p>
{% endif %}

<h3>files</h3>
{% if not t.logdir_found %}
<p class="none">the test's directory is missing</p>
{% else %}
{% if t.logs or t.artifacts %}
<ul class="files">
{% for f in t.logs %}<li><a href="{{ f.href }}">{{ f.name }}</a> <span class="size">{{ f.size }}</span></li>
{% endfor %}
{% for f in t.artifacts %}<li><a href="{{ f.href }}">{{ f.name }}</a> <span class="size">{{ f.size }}</span></li>
{% endfor %}
</ul>
{% endif %}
{% if not t.artifacts %}<p class="none">no artifacts</p>{% endif %}
{% endif %}
</section>
{% endfor %}
<footer>written {{ now }} by qmp-mig from results.json</footer>
</body>
</html>
"""


def write_html_report(job: Path) -> Path:
    """``job/report.html`` from ``job/results.json``; returns its path."""
    return write_run_report(job, [job])


def write_run_report(directory: Path, jobs: list[Path], title: str = "") -> Path:
    """``directory/report.html`` for the tests of every job in ``jobs`` (the Avocado
    jobs of one ``qmp-mig run``, each a subdirectory); returns its path."""
    directory = directory.resolve()  # through a "latest" symlink, so links name real directories
    tests: list[_Test] = []
    totals: dict[str, int] = {}
    seconds = 0.0
    first: dict[str, Any] = {}
    for job in jobs:
        job = job.resolve()
        results = json.loads((job / "results.json").read_text())
        first = first or results
        offset = len(tests)
        tests += [_test(job, offset + i, record, base=directory)
                  for i, record in enumerate(results.get("tests") or [], start=1)]
        for label, value in _counts(results):
            totals[label] = totals.get(label, 0) + value
        seconds += float(results.get("time") or 0)
    for number, test in enumerate(tests, start=1):  # numbered across jobs
        test.number, test.anchor = str(number), f"test-{number}"
    counts = list(totals.items())
    name = directory.name
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    html = environment.from_string(_TEMPLATE).render(
        short_id=title or ("job " + name.rsplit("-", 1)[-1] if name.startswith("job-") else name),
        job_name=name,
        job_id=str(first.get("job_id") or "") if len(jobs) == 1 else f"{len(jobs)} Avocado jobs",
        start=str(first.get("start") or "").split(".", 1)[0],
        total_time=_duration(seconds),
        total=len(tests),
        counts=counts,
        verdict=f"{totals.get('pass', 0)} of {len(tests)} passed",
        tests=tests,
        now=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
    )
    report = directory / "report.html"
    report.write_text(html)
    return report
