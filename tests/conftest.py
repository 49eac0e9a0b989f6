"""Shared fixtures: tiny local models, built once per test session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Never reach for a model hub from the tests; everything is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The default-model cache lives in the repo (git-ignored) so repeated runs convert once.
os.environ.setdefault("IAMA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "iama"))
# Importing TRL sets VLLM_LOGGING_LEVEL=ERROR where it is unset (trl/_compat.py), so once any test
# imported TRL, every process started later (our servers, vLLM's) logged none of vLLM's lines.
# vLLM's own default, fixed for the session: what a process logs does not depend on test order.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-clf"))


API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def tiny_server(tiny_llama, tiny_classifier, tmp_path_factory):
    """The real server on vLLM with the tiny model; one engine for the whole session."""
    from servers import start_server

    d = tmp_path_factory.mktemp("server")
    cfg = d / "server.yaml"
    cfg.write_text(
        "dtype: float32\n"  # as on CI (no native bf16), whatever this machine has
        "max_budget: 16\n"
        "max_tokens: 256\n"
        "max_prompt_tokens: 200\n"
        "max_concurrent_requests: 2\n"
        "max_queued_requests: 6\n"
        "rewards:\n"
        f"  clf: {{type: 'hf:{tiny_classifier}', label: POSITIVE, pair: false}}\n"
        "  short: {type: length, target: 5, max_length: 50}\n"
    )
    srv = start_server(str(tiny_llama), d, env={"IAMA_API_KEYS": f"other-key,{API_KEY}", "IAMA_CONFIG_FILE": str(cfg)})
    yield srv
    srv.stop()


# The modules that use the session's ``tiny_server``. Under pytest-xdist they run as one unit on
# one worker, so that one engine serves them all (the scheduler below sees only node ids, before
# any worker has collected). This list is checked against the tests' fixtures: a test of a module
# that uses the server and is missing here, or of a listed module that does not, fails.
TINY_SERVER_MODULES = frozenset(
    {
        "test_client.py",
        "test_openai_compat_vllm.py",
        "test_playground.py",
        "test_server.py",
        "test_tensor_parallel.py",
    }
)

# The tiers (pyproject's markers): ``inprocess`` alone, or what a test needs beyond this process,
# ``engine`` and/or ``tools``. Every test names its tier; none is inferred.
TIERS = ("inprocess", "engine", "tools")

_MISPLACED = pytest.StashKey[str]()


def _tier_problem(item: pytest.Item) -> str | None:
    tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
    if not tiers:
        return "no tier marker: mark it (or its module) inprocess, engine or tools"
    if "inprocess" in tiers and len(tiers) > 1:
        return f"inprocess and {sorted(tiers - {'inprocess'})}: the fast tier needs neither"
    return None


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect, on every worker's whole collection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check each test's tier and the tiny-server grouping. A mistake fails the tests concerned
    (at setup, naming it): an error raised here would be lost in an xdist worker's crash."""
    uses = {item: "tiny_server" in getattr(item, "fixturenames", ()) for item in items}
    using = {item.path.name for item, used in uses.items() if used}
    whole_modules = not any("::" in arg for arg in config.args)  # else a module's test may not be collected
    for item in items:
        problems = [why] if (why := _tier_problem(item)) else []
        module = item.path.name
        if uses[item] and module not in TINY_SERVER_MODULES:
            problems.append(f"uses tiny_server, but {module} is not in conftest.TINY_SERVER_MODULES")
        if whole_modules and module in TINY_SERVER_MODULES and module not in using:
            problems.append(f"{module} is in conftest.TINY_SERVER_MODULES, but none of its tests uses tiny_server")
        if problems:
            item.stash[_MISPLACED] = "; ".join(problems)


@pytest.hookimpl(tryfirst=True)  # before any fixture starts an engine
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _MISPLACED in item.stash:
        pytest.fail(f"{item.nodeid}: {item.stash[_MISPLACED]}", pytrace=False)


def scheduling_unit(nodeid: str) -> str:
    """The unit a test is scheduled in: its module, or ``tiny_server`` for the modules that share
    the session's engine."""
    test_file = nodeid.split("::", 1)[0]
    return "tiny_server" if Path(test_file).name in TINY_SERVER_MODULES else Path(test_file).name


# Seconds each unit took in a measured full run (written by ``--unit-times FILE``). The workers
# take the longest units first, so that no long module starts last while the other worker idles:
# with two workers the suite's time is the busier worker's.
UNIT_SECONDS = Path(__file__).with_name("unit_seconds.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--unit-times", metavar="FILE", help="write the seconds each scheduling unit took (JSON)")


_UNIT_TIMES: dict[str, float] = {}  # unit -> seconds of its tests' phases, on the controller


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller (xdist forwards every report), and in a run without workers."""
    unit = scheduling_unit(report.nodeid)
    _UNIT_TIMES[unit] = _UNIT_TIMES.get(unit, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not _UNIT_TIMES:
        return
    longest = sorted(_UNIT_TIMES.items(), key=lambda kv: -kv[1])
    terminalreporter.write_sep("-", "seconds per scheduling unit (tests/unit_seconds.json orders them)")
    for unit, seconds in longest[:15]:
        terminalreporter.write_line(f"{seconds:8.1f}  {unit}")
    if path := config.getoption("--unit-times"):
        Path(path).write_text(json.dumps({u: round(t, 1) for u, t in longest}, indent=1) + "\n")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``scripts/test.sh`` runs two workers) a module is one unit, so that
    its module-scoped engine or training starts once and its tests keep their order; and the
    modules in ``TINY_SERVER_MODULES`` join one unit, so that one engine serves them all.
    (xdist's own ``loadgroup`` marks do not reach pytest 9's node ids.) Units go out longest
    first by ``UNIT_SECONDS`` (a unit not measured yet counts as long, so it is not left last)."""
    from xdist.scheduler import LoadFileScheduling

    measured = json.loads(UNIT_SECONDS.read_text()) if UNIT_SECONDS.is_file() else {}
    unknown = max(measured.values(), default=0.0)

    class ModuleScheduling(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return scheduling_unit(nodeid)

        def _assign_work_unit(self, node) -> None:  # the first call sees the whole queue
            if not self.ordered:
                for unit in sorted(self.workqueue, key=lambda unit: -measured.get(unit, unknown)):
                    self.workqueue.move_to_end(unit)
                self.ordered = True
            super()._assign_work_unit(node)

    return ModuleScheduling(config, log)
