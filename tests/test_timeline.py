# SPDX-License-Identifier: GPL-2.0-or-later
"""The timeline: reading transcripts and events files, the text columns, the picture."""

import itertools
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qmp_mig import timeline
from qmp_mig.timeline import Mark


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(t: float, kind: str, message: object, vm: str = "source") -> dict:
    return {"t": t, "vm": vm, "kind": kind, "message": message}


@pytest.fixture
def transcript(tmp_path: Path) -> Path:
    path = write_jsonl(tmp_path / "source.qmp.jsonl", [
        record(10.0, "greeting", "Greeting(...)"),
        record(10.1, "command", {"execute": "migrate", "arguments": {"uri": "unix:/x"}}),
        record(10.2, "reply", {"execute": "migrate", "return": {}}),
        record(10.3, "command", {"execute": "query-status", "arguments": {}}),
        record(10.4, "reply", {"execute": "query-status", "return": {"status": "running"}}),
        record(10.5, "command", {"execute": "query-migrate", "arguments": {}}),
        record(10.6, "reply", {"execute": "query-migrate", "error": {"class": "GenericError", "desc": "no migration"}}),
        record(10.7, "command", {"execute": "cont", "arguments": {}}),
        record(10.8, "error", {"execute": "cont", "error": "GenericError", "desc": "Device busy"}),
        record(10.9, "command", {"execute": "quit", "arguments": {}}),
        record(11.0, "timeout", {"execute": "quit", "seconds": 60}),
        record(10.55, "event", {"event": "VFIO_MIGRATION", "timestamp": {"seconds": 9, "microseconds": 750000},
                                "data": {"device-id": "vfio0", "device-state": "pre-copy"}}),
        record(11.1, "mystery", {"x": 1}),
        record(11.2, "command", {"execute": "query-hung", "arguments": {}}),
    ])
    with path.open("a") as out:
        out.write('{"t": 11.3, "vm": "source", "kind": "comm')  # cut short when the test died
    return path


def test_transcript_one_liners(transcript: Path) -> None:
    marks = timeline.marks_from_transcript(transcript)
    assert [(m.time, m.kind, m.text, m.failed) for m in marks] == [
        (10.0, "note", "QMP connected", False),
        (10.1, "command", "migrate uri=unix:/x", False),
        (10.2, "reply", "migrate ok", False),
        # query-status went right: dropped. query-migrate failed: kept, with its command.
        (10.5, "command", "query-migrate", False),
        (10.55, "event", "VFIO_MIGRATION vfio0 pre-copy", False),
        (10.6, "reply", "query-migrate: no migration", True),
        (10.7, "command", "cont", False),
        (10.8, "reply", "cont: Device busy", True),
        (10.9, "command", "quit", False),
        (11.0, "reply", "quit: no reply in 60 s", True),
        (11.1, "note", 'mystery {"x":1}', False),
        (11.2, "command", "query-hung", False),  # never answered: that is the story
    ]
    assert {m.vm for m in marks} == {"source"}


def test_transcript_options(transcript: Path) -> None:
    everything = timeline.marks_from_transcript(transcript, skip_queries=False)
    assert [m.text for m in everything if "query-status" in m.text] == ["query-status", "query-status ok"]
    without_events = timeline.marks_from_transcript(transcript, include_events=False)
    assert not [m for m in without_events if m.kind == "event"]


def test_long_arguments_are_cut(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.qmp.jsonl", [record(
        1.0, "command", {"execute": "migrate-set-capabilities",
                         "arguments": {"capabilities": [{"capability": "events", "state": True}] * 5}})])
    (mark,) = timeline.marks_from_transcript(path)
    assert len(mark.text) <= 60 and mark.text.endswith("…")
    assert mark.text.startswith('migrate-set-capabilities capabilities=[{"capability":"event')


def test_events_file_with_offset(tmp_path: Path) -> None:
    path = tmp_path / "destination.events.json"
    path.write_text(json.dumps([
        {"time": 100.5, "vm": "destination", "event": "MIGRATION", "data": {"status": "active"}},
        {"time": 100.0, "vm": "destination", "event": "VFIO_MIGRATION",
         "data": {"device-id": "vfio0", "device-state": "resuming", "qom-path": "/machine/peripheral/vfio0"}},
        {"time": 101.0, "vm": "destination", "event": "RESUME", "data": {}},
        {"time": 102.0, "vm": "destination", "event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}},
    ]))
    marks = timeline.marks_from_events(path, offset=-0.25)  # host clock 0.25 s behind the controller
    assert [(m.time, m.vm, m.kind, m.text) for m in marks] == [
        (100.25, "destination", "event", "VFIO_MIGRATION vfio0 resuming"),
        (100.75, "destination", "event", "MIGRATION active"),
        (101.25, "destination", "event", "RESUME"),
        (102.25, "destination", "event", 'SHUTDOWN {"guest":false,"reason":"host-qmp-quit"}'),
    ]


def test_host_clock_offset(transcript: Path) -> None:
    # The one event: host time 9.75, logged at 10.55 on the controller.
    assert timeline.host_clock_offset(transcript) == pytest.approx(-0.8)


MARKS = [
    Mark(5.0, "destination", "command", "migrate-incoming uri=unix:/x"),
    Mark(5.0, "source", "note", "QMP connected"),  # same time: keeps its order
    Mark(4.5, "cancelled-destination", "event", "MIGRATION failed"),
    Mark(6.25, "test", "guest", "memory agent: verify 2048 pages, 1 bad", failed=True),
    Mark(7.0, "source", "kernel", "vfio0 RUNNING->PRE_COPY " + "x" * 60),
]


def test_text_columns() -> None:
    lines = timeline.render_text(MARKS, title="test_migrate").splitlines()
    assert lines[0] == "test_migrate"
    header = [cell.strip() for cell in lines[1].split("|")]
    assert header == ["+s", "test", "source", "cancelled-destination", "destination"]
    rows = [[cell.strip() for cell in line.split("|")] for line in lines[3:]]
    assert [row[0] for row in rows] == ["+0.000", "+0.500", "+0.500", "+1.750", "+2.500"]
    assert rows[0][3] == "event: MIGRATION failed"
    assert rows[1][4] == "command: migrate-incoming uri=unix:/x"
    assert rows[2][2] == "note: QMP connected"
    assert rows[3][1] == "!! guest: memory agent: verify 2048 pages, 1 bad"
    assert len(rows[4][2]) == 48 and rows[4][2].endswith("…")
    assert len({line.index("|") for line in lines[1:] if "|" in line}) == 1  # columns line up


def test_text_without_marks() -> None:
    assert "no marks" in timeline.render_text([])


def test_svg_and_files(tmp_path: Path) -> None:
    txt, svg = timeline.write_timeline(MARKS, tmp_path / "artifacts", title="VfioMigration.test_migrate")
    assert (txt.name, svg.name) == ("timeline.txt", "timeline.svg")
    root = ET.parse(svg).getroot()  # valid XML
    assert root.tag.endswith("svg")
    texts = " ".join("".join(element.itertext()) for element in root.iter())
    assert "VfioMigration.test_migrate" in texts
    assert "memory agent: verify 2048 pages, 1 bad" in texts  # failed marks are labelled
    assert "#d62728" in svg.read_text()  # ... and red
    assert timeline.read_marks(tmp_path / "artifacts" / "timeline.json") == sorted(MARKS, key=lambda m: m.time)
    assert "VfioMigration.test_migrate" in txt.read_text()


def test_labels_spread_apart_in_order() -> None:
    wanted = [1.0] * 10 + [1.05, 5.0, 9.99]
    placed = timeline._spread(wanted, gap=0.1, lo=0.0, hi=10.0)
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(placed))
    assert placed[0] >= 0.0 and placed[-1] <= 10.0
    assert placed[-2] == pytest.approx(5.0)  # left alone where there is room
    assert sum(placed[:11]) / 11 == pytest.approx(sum(wanted[:11]) / 11)  # a crowd stays centred


def test_import_is_cheap() -> None:
    code = "import sys, qmp_mig.timeline; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
