# SPDX-License-Identifier: GPL-2.0-or-later
"""Our Avocado plugin (qmp_mig/avocado_plugin.py), through real ``avocado`` runs:
listing, refusing a job without a usable host configuration before any test
starts, leaving other jobs alone, and one qmp-mig test at a time."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qmp_mig.avocado_plugin import NO_CONFIGURATION
from qmp_mig.config import ConfigError
from qmp_mig.config import load as load_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "ci" / "kvm-host.example.toml"


def avocado(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """``avocado`` as a user runs it from the repository, with no host configuration
    in the environment unless given."""
    env = {k: v for k, v in os.environ.items() if k not in {"QMP_MIG_HOST_CONFIG", "QMP_MIG_RUN_DIR"}}
    env.update(environment)
    return subprocess.run([sys.executable, "-m", "avocado", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def scenario_names() -> set[str]:
    """``file:Class.test_method`` for every test method in avocado_tests/."""
    names = set()
    for path in sorted((REPO / "avocado_tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                names |= {f"avocado_tests/{path.name}:{node.name}.{item.name}" for item in node.body
                          if isinstance(item, ast.FunctionDef) and item.name.startswith("test")}
    return names


def test_list_shows_every_scenario() -> None:
    listing = avocado("list", "avocado_tests/")
    assert listing.returncode == 0, listing.stderr
    listed = {line.split()[1] for line in listing.stdout.splitlines() if line.startswith("avocado-instrumented ")}
    assert listed == scenario_names()
    verbose = avocado("--verbose", "list", "avocado_tests/test_refusals.py")
    assert verbose.returncode == 0, verbose.stderr
    rows = [line for line in verbose.stdout.splitlines() if "Refusals.test_postcopy_refused" in line]
    assert rows and rows[0].split()[-1] == "vfio,migration,refusal"


def refused_before_any_test(run: subprocess.CompletedProcess[str], results: Path, message: str) -> None:
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [message], run.stderr
    assert "STARTED" not in run.stdout and "JOB ID" not in run.stdout, run.stdout
    assert not results.exists()  # no job was even created


def test_a_job_without_host_configuration_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = avocado("run", "--job-results-dir", str(results), "avocado_tests/test_refusals.py")
    refused_before_any_test(run, results, NO_CONFIGURATION)


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return f"qmp-mig: {error.value}"


def test_a_configuration_that_does_not_load_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "host.toml"
    bad.write_text("[host\nkind = 'local'\n")
    results = tmp_path / "results"
    run = avocado("run", "--job-results-dir", str(results), "--qmp-mig-config", str(bad),
                  "avocado_tests/test_refusals.py")
    refused_before_any_test(run, results, config_error(bad))
    # The same for a file named by -p or by the environment.
    missing = tmp_path / "missing.toml"
    for run in (avocado("run", "--job-results-dir", str(results), "-p", f"host_config={missing}",
                        "avocado_tests/test_refusals.py"),
                avocado("run", "--job-results-dir", str(results), "avocado_tests/test_refusals.py",
                        QMP_MIG_HOST_CONFIG=str(missing))):
        refused_before_any_test(run, results, config_error(missing))


PROBE = '''
import os
import time
from pathlib import Path

from avocado import Test
{import_line}


class Probe(Test):
    """Each test marks itself running and looks for the other one's mark: tests that
    run at the same time see each other, tests run one at a time never do."""

    def meet(self, me: str, other: str) -> None:
        here = Path({directory!r})
        (here / me).touch()
        deadline = time.monotonic() + {wait}
        met = False
        while not met and time.monotonic() < deadline:
            met = (here / other).exists()
            time.sleep(0.05)
        (here / me).unlink()
        self.whiteboard = ("together" if met else "alone") + " " + os.environ.get("QMP_MIG_HOST_CONFIG", "-")

    def test_a(self) -> None:
        self.meet("a", "b")

    def test_b(self) -> None:
        self.meet("b", "a")
'''


def probe(tmp_path: Path, import_line: str, wait: float) -> Path:
    test = tmp_path / "test_probe.py"
    test.write_text(textwrap.dedent(PROBE).format(import_line=import_line, directory=str(tmp_path), wait=wait))
    return test


def job_results(results: Path) -> tuple[Path, dict[str, str]]:
    (job,) = results.glob("job-*")
    tests = json.loads((job / "results.json").read_text())["tests"]
    assert {t["status"] for t in tests} == {"PASS"}, tests
    return job, {t["name"].rsplit(".", 1)[-1]: t["whiteboard"] for t in tests}


def test_a_job_without_qmp_mig_tests_is_left_alone(tmp_path: Path) -> None:
    """No configuration needed, and its two tests run side by side as asked (which
    also shows that the probe sees tests running at the same time)."""
    results = tmp_path / "results"
    run = avocado("run", "--job-results-dir", str(results), "--max-parallel-tasks", "2",
                  str(probe(tmp_path, "", wait=20)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "qmp-mig" not in run.stdout + run.stderr
    job, seen = job_results(results)
    assert seen == {"test_a": "together -", "test_b": "together -"}
    assert not (job / "report.html").exists()


def test_a_qmp_mig_job_runs_one_test_at_a_time(tmp_path: Path) -> None:
    """Asked for 4 in parallel, the plugin says it runs them one at a time, and it does;
    the tests get the configuration, and the job ends with our table and report."""
    results = tmp_path / "results"
    run = avocado("run", "--job-results-dir", str(results), "--max-parallel-tasks", "4",
                  "--qmp-mig-config", str(EXAMPLE_CONFIG.relative_to(REPO)),
                  "--qmp-mig-no-preflight",  # this machine has no VFIO: the subject here is parallelism
                  str(probe(tmp_path, "import qmp_mig  # a qmp-mig test", wait=1.5)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "qmp-mig: tests run one at a time (they share the host's devices), not 4 in parallel as asked" \
        in run.stdout.splitlines()
    job, seen = job_results(results)
    assert seen == {"test_a": f"alone {EXAMPLE_CONFIG}", "test_b": f"alone {EXAMPLE_CONFIG}"}
    assert "'run.max_parallel_tasks': 1," in (job / "job.log").read_text()
    assert "qmp-mig results (2 tests)" in run.stdout
    assert f"qmp-mig report: {job / 'report.html'}" in run.stdout.splitlines()
    assert "Probe.test_a" in (job / "report.html").read_text()


def test_a_host_that_fails_the_preflight_starts_no_test(tmp_path: Path) -> None:
    """This machine has no VFIO: the plugin's `qmp-mig check` prints its table and the job
    stops before any test, with exit 2."""
    results = tmp_path / "results"
    run = avocado("run", "--job-results-dir", str(results), "--qmp-mig-config", str(EXAMPLE_CONFIG),
                  str(REPO / "avocado_tests" / "test_refusals.py"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "what to do" in run.stderr and "FAIL" in run.stderr
    assert f"qmp-mig: the host is not ready (qmp-mig check --config {EXAMPLE_CONFIG}); no test started" \
        in run.stderr
    assert not results.exists() or not list(results.glob("job-*/test-results/*"))


KILLED = '''
import os
import time
from pathlib import Path

import qmp_mig  # a qmp-mig test
from avocado import Test


class Killed(Test):
    """Makes a testbed directory with a lease, as a Testbed does, and is killed at its
    timeout before it can clean up."""

    timeout = 2

    def test_killed(self) -> None:
        bed = Path({workdir!r}) / f"testbed.{{os.environ['QMP_MIG_RUN_ID']}}.probe"
        bed.mkdir(parents=True)
        (bed / "lease").write_text("")
        time.sleep(60)
'''


def test_a_plain_avocado_job_sweeps_what_its_killed_test_left(tmp_path: Path) -> None:
    """Outside `qmp-mig run` the job is a run of its own: it records itself and, after a
    test was interrupted, sweeps that test's testbed from the host; the record goes."""
    workdir = tmp_path / "host"
    config = tmp_path / "host.toml"
    config.write_text(f'[host]\nkind = "local"\nworkdir = "{workdir}"\n'
                      '[guest]\nkernel = "/k"\ninitrd = "/i"\nkey = "/key"\n'
                      '[[device]]\nkind = "mdev"\nparent = "mtty"\ntype = "mtty-2"\n')
    test = tmp_path / "test_killed.py"
    test.write_text(KILLED.format(workdir=str(workdir)))
    run = avocado("run", "--job-results-dir", str(tmp_path / "results"), "--qmp-mig-config", str(config),
                  "--qmp-mig-no-preflight", str(test), QMP_MIG_CACHE=str(tmp_path / "cache"))
    assert run.returncode != 0, run.stdout + run.stderr  # the test was interrupted
    assert "INTERRUPTED" in run.stdout, run.stdout
    swept = [line for line in run.stdout.splitlines() if "cleaned up after an interrupted test: dir" in line]
    assert swept and "/testbed.avocado-" in swept[0], run.stdout
    assert list(workdir.iterdir()) == []
    assert list((tmp_path / "cache" / "runs").iterdir()) == []
