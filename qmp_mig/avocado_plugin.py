# SPDX-License-Identifier: GPL-2.0-or-later
"""qmp-mig as an Avocado plugin (registered in pyproject.toml's entry points).

- :class:`QmpMigInit` registers the settings of section ``qmp_mig``: ``config``
  (the host configuration) and ``summary`` (our table and HTML report).
- :class:`QmpMigCLI` adds ``--qmp-mig-config FILE`` and ``--qmp-mig-no-summary``
  to ``avocado run``, and refuses, before the job exists, a job with qmp-mig
  tests (a test file that imports ``qmp_mig``) whose tests would have no host
  configuration, or one that does not load.
- :class:`QmpMigJob`, before the tests, hands the configuration to them
  (``QMP_MIG_HOST_CONFIG``, inherited by the test processes) and makes each
  qmp-mig suite run one test at a time (they share the host's devices). A job
  not started by ``qmp-mig run`` is a run of its own: it sweeps what killed
  runs left, records itself (qmp_mig/leftovers.py) and, after the tests, sweeps
  what its own killed tests left (QEMUs, mdevs, PCI functions lent to a driver).
  After the job it prints our summary table and writes ``report.html`` into
  the job's directory.

Jobs without qmp-mig tests are left alone.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from avocado.core import exit_codes
from avocado.core.output import LOG_UI
from avocado.core.plugin_interfaces import CLI, Init, JobPost, JobPre
from avocado.core.settings import settings

from .pools import DEFAULT_NEED, Need

SECTION = "qmp_mig"
CONFIG = f"{SECTION}.config"
SUMMARY = f"{SECTION}.summary"
PREFLIGHT = f"{SECTION}.preflight"
#: What MigrationTest.setUp falls back to when no test parameter names the file.
HOST_CONFIG_ENV = "QMP_MIG_HOST_CONFIG"
#: The run the testbeds belong to (qmp_mig.testbed.run_id); qmp-mig run sets it.
RUN_ID_ENV = "QMP_MIG_RUN_ID"
PARALLEL = "run.max_parallel_tasks"
NO_CONFIGURATION = ("qmp-mig: no host configuration: pass --qmp-mig-config FILE "
                    "(qmp-mig run boots the lab and passes its own)")


class Refused(Exception):
    """A qmp-mig job that must not start; the message is the whole explanation."""


def qmp_mig_test_files(references: Iterable[str]) -> list[Path]:
    """The Python files among ``references`` (``file.py``, ``file.py:Class.test``,
    directories) that import ``qmp_mig``: the job's qmp-mig tests."""
    found: list[Path] = []
    for reference in references:
        path = Path(str(reference).split(":", 1)[0])
        if path.is_dir():
            candidates = []
            for root, directories, files in os.walk(path):
                directories[:] = [d for d in directories if not d.startswith(".") and d != "__pycache__"]
                candidates += [Path(root) / name for name in files if name.endswith(".py")]
        else:
            candidates = [path] if path.suffix == ".py" and path.is_file() else []
        found += [file for file in sorted(candidates) if _imports_qmp_mig(file)]
    return found


def _imports_qmp_mig(path: Path) -> bool:
    try:
        source = path.read_text(errors="replace")
        if "qmp_mig" not in source:
            return False
        tree = ast.parse(source, str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "qmp_mig" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").split(".")[0] == "qmp_mig":
            return True
    return False


def _is_qmp_mig_suite(config: dict[str, Any], tests: Iterable[Any] = ()) -> bool:
    references = list(config.get("resolver.references") or [])
    references += [t.uri for t in tests if getattr(t, "uri", None)]
    return bool(qmp_mig_test_files(references))


def host_configs(config: dict[str, Any]) -> list[str]:
    """Every host configuration the job's tests will load, found the way
    MigrationTest.setUp finds it: the ``host_config`` parameter (``-p`` or a
    variant), else the ``qmp_mig.config`` setting (``--qmp-mig-config``), else
    ``$QMP_MIG_HOST_CONFIG``. Raises :class:`Refused` if a test would have none,
    or a file does not load."""
    from .config import ConfigError
    from .config import load as load_config

    fallback = config.get(CONFIG) or os.environ.get(HOST_CONFIG_ENV)
    parameters = dict(config.get("run.test_parameters") or [])
    if parameters:  # Avocado takes -p or variants, never both
        chosen = [parameters.get("host_config") or fallback]
    else:
        chosen = [value or fallback for value in _variant_values(config, "host_config")]
    if not all(chosen):
        raise Refused(NO_CONFIGURATION)
    paths = sorted({str(path) for path in chosen})
    for path in paths:
        try:
            load_config(path)
        except ConfigError as bad:
            raise Refused(f"qmp-mig: {bad}") from None
    return paths


def _variant_values(config: dict[str, Any], key: str) -> list[Any]:
    """``key`` as each variant's test sees it (one None when there are no variants)."""
    from avocado.core.parameters import AvocadoParams
    from avocado.core.varianter import Varianter

    variants = Varianter()
    try:
        variants.parse(config)
        return [AvocadoParams(v["variant"], v["paths"]).get(key) for v in variants.itertests()]
    except (OSError, ValueError) as bad:
        raise Refused(f"qmp-mig: the variants do not load: {bad}") from None


def instance_needs(references: Iterable[str]) -> dict[str, Need]:
    """How many instances of a device kind each test holds at once, from its tags
    (``:avocado: tags=instances:N``; 2 without: a source and a destination), and
    which table names the kind: [test_device] (tag ``device``), [unmigratable_device]
    (tag ``unmigratable``), else the [[device]] entries."""
    from avocado.core.resolver import resolve

    needs = {}
    for resolution in resolve(list(references)):
        for runnable in resolution.resolutions:
            tags = runnable.tags or {}
            counts = [int(v) for v in tags.get("instances") or () if str(v).isdigit()]
            name = str(runnable.uri).rsplit("/", 1)[-1]
            table = ("test_device" if "device" in tags else
                     "unmigratable_device" if "unmigratable" in tags else "device")
            needs[name] = Need(max(counts, default=DEFAULT_NEED), table)
    return needs


def _preflight(paths: list[str], references: Iterable[str] = ()) -> None:
    """``qmp-mig check`` on every host the job will use; its table and a refusal if one fails."""
    from rich.console import Console

    from .preflight import check
    from .testbed import connect

    for path in paths:
        result = check(Path(path), connect, instance_needs(references))
        if not result.ok:
            Console(file=sys.__stderr__, highlight=False).print(result.table(f"qmp-mig check: {path}"))
            raise Refused(f"qmp-mig: the host is not ready (qmp-mig check --config {path}); no test started")


def _prepare(config: dict[str, Any]) -> None:
    """One test at a time, and the configured file where the tests look for it."""
    config[PARALLEL] = 1
    if config.get(CONFIG):
        os.environ[HOST_CONFIG_ENV] = str(Path(config[CONFIG]).resolve())


class QmpMigInit(Init):
    """Registers the ``qmp_mig`` settings (command line or Avocado config file)."""

    name = "qmp_mig"
    description = "qmp-mig settings: host configuration, summary and report"

    def initialize(self) -> None:
        settings.register_option(
            section=SECTION, key="config", default=None, metavar="FILE",
            help_msg="Host configuration (TOML) for qmp-mig tests, e.g. a copy of "
                     "ci/kvm-host.example.toml. A test's host_config parameter (-p or a "
                     "variant) wins over it; without either, $QMP_MIG_HOST_CONFIG is used.")
        settings.register_option(
            section=SECTION, key="preflight", default=True, key_type=bool,
            help_msg="Before a job with qmp-mig tests, check the host (qmp-mig check) and "
                     "start nothing when an item fails.")
        settings.register_option(
            section=SECTION, key="summary", default=True, key_type=bool,
            help_msg="After a job with qmp-mig tests, print qmp-mig's summary table and "
                     "write report.html into the job's directory.")


class QmpMigCLI(CLI):
    """``avocado run`` options, and the checks made before a qmp-mig job starts."""

    name = "qmp_mig"
    description = "qmp-mig options for 'run': host configuration, summary"

    def configure(self, parser: Any) -> None:
        run = parser.subcommands.choices.get("run")
        if run is None:
            return
        group = run.add_argument_group("qmp-mig (live migration with VFIO devices)")
        settings.add_argparser_to_option(namespace=CONFIG, parser=group,
                                         long_arg="--qmp-mig-config", metavar="FILE")
        settings.add_argparser_to_option(
            namespace=PREFLIGHT, parser=group, long_arg="--qmp-mig-no-preflight",
            help_msg="Do not check the host before the job (qmp-mig run checks it once per suite).")
        settings.add_argparser_to_option(
            namespace=SUMMARY, parser=group, long_arg="--qmp-mig-no-summary",
            help_msg="Do not print qmp-mig's summary table or write its report.html "
                     "(qmp-mig run makes its own, across the jobs of a suite).")

    def run(self, config: dict[str, Any]) -> None:
        if config.get("subcommand") != "run":
            return
        if not _is_qmp_mig_suite(config):
            return
        if config.get("run.dry_run.enabled"):
            return  # nothing runs: listing variants needs no host
        try:
            paths = host_configs(config)
            if config.get(PREFLIGHT):
                _preflight(paths, config.get("resolver.references") or ())
        except Refused as refused:
            # Avocado's own output is not set up yet (and would repeat early lines).
            print(refused, file=sys.__stderr__, flush=True)
            sys.exit(exit_codes.AVOCADO_JOB_FAIL)


class QmpMigJob(JobPre, JobPost):
    """Around a job with qmp-mig tests: one test at a time before, summary and report after."""

    name = "qmp_mig"
    description = "qmp-mig: one test at a time; summary table and report.html after the job"

    def pre(self, job: Any) -> None:
        # Here rather than in the CLI plugin: jobs made with Avocado's Python API get it
        # too, and each suite's own config is what its runner reads.
        suites = [s for s in job.test_suites if _is_qmp_mig_suite(s.config, s.tests or ())]
        requested = max([s.config.get(PARALLEL) or 1 for s in suites], default=1)
        if requested > 1 and requested != settings.as_full_dict()[PARALLEL]["default"]:
            LOG_UI.info("qmp-mig: tests run one at a time (they share the host's devices), "
                        "not %s in parallel as asked", requested)
        for suite in suites:
            _prepare(suite.config)
        if suites:
            _prepare(job.config)  # as job.log records it
            self._record_run(suites)

    def _record_run(self, suites: list[Any]) -> None:
        """Under ``qmp-mig run`` the run is its; else this job is a run of its own."""
        if os.environ.get(RUN_ID_ENV):
            return
        from . import leftovers

        configs: set[str] = set()
        for suite in suites:
            try:
                configs.update(str(Path(c).resolve()) for c in host_configs(suite.config))
            except Refused:
                continue  # its tests cancel with the reason; nothing of theirs to sweep
        if not configs:
            return
        leftovers.finish_earlier_runs(LOG_UI.info)
        run_id = f"avocado-{os.getpid()}-{int(time.time())}"
        os.environ[RUN_ID_ENV] = run_id  # the testbeds' directories and leases carry it
        leftovers.record(run_id, [Path(c) for c in sorted(configs)])
        self._run = (run_id, sorted(configs))

    def _sweep_run(self, job: Any) -> None:
        """A test that was interrupted (killed at its timeout, or by a signal to the job)
        may not have cleaned up: sweep what the run's testbeds left. A test that ended
        on its own has cleaned up in its tearDown."""
        run = getattr(self, "_run", None)
        if run is None:
            return
        from . import leftovers

        run_id, configs = run
        tests = job.result.tests if job.result is not None else []
        interrupted = job.interrupted_reason is not None or any(
            t.get("status") == "INTERRUPTED" for t in tests)
        if not interrupted or all(leftovers.sweep_run(Path(c), run_id, 120.0, LOG_UI.info) for c in configs):
            leftovers.finished(run_id)
        del self._run
        os.environ.pop(RUN_ID_ENV, None)

    def post(self, job: Any) -> None:
        self._sweep_run(job)
        if not job.config.get(SUMMARY) or job.logdir is None or job.config.get("run.dry_run.enabled"):
            return
        if not any(_is_qmp_mig_suite(s.config, s.tests or ()) for s in job.test_suites):
            return
        from rich.console import Console

        from .report import write_run_report
        from .runner import results_table, summary_table

        logdir = Path(job.logdir)
        written = (logdir / "results.json").exists()  # the json result plugin ran before us
        if written:
            table = summary_table([logdir])
        elif job.result is not None and job.result.tests:  # the JSON result is disabled
            table = results_table([_record(test) for test in job.result.tests])
        else:
            return  # no test ran
        console = Console(highlight=False)
        if not job.config.get("stdout_claimed_by"):
            console.print(table)
        if written:
            LOG_UI.info("qmp-mig report: %s", write_run_report(logdir, [logdir]))
        else:
            LOG_UI.info("qmp-mig report: none, the job wrote no results.json (JSON result disabled)")


def _record(test: dict[str, Any]) -> dict[str, Any]:
    """A test of Avocado's in-memory result, as results.json would hold it."""
    test_id: Any = test.get("name")  # an avocado.core.test_id.TestID
    name = f"{test_id.name}{test_id.str_variant}" if hasattr(test_id, "str_variant") else str(test_id)
    record = {key: test.get(key) for key in ("status", "whiteboard", "time_elapsed", "logdir", "tags")}
    record.update(name=name, fail_reason=str(test.get("fail_reason") or ""))
    return json.loads(json.dumps(record, default=str))
