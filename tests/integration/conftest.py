"""Fixtures for the integration tests: real `strata serve` processes driven by real clients.

The server binary comes from STRATA_BIN (scripts/test.sh sets it to the freshly built one).
Fixtures kill every process they start by PID, also when a test fails; the tail of every
node's log is attached to the report of a failing test.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

import harness
from harness import Cluster, ClusterSettings, Node

# Nothing in these tests may go through a proxy: scrub the settings before any client runs.
harness.scrub_proxy_env(os.environ)

# Nodes that belong to fixtures currently set up; their logs go into failure reports.
_active_nodes: list[Node] = []


def _activate(nodes: list[Node]) -> None:
    _active_nodes.extend(nodes)


def _deactivate(nodes: list[Node]) -> None:
    for n in nodes:
        if n in _active_nodes:
            _active_nodes.remove(n)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for node in _active_nodes:
            report.sections.append(
                (
                    f"{node.name} log, last {harness.LOG_TAIL_LINES} lines ({node.log_path})",
                    node.log_tail(),
                )
            )
    return report


def pytest_sessionfinish(session, exitstatus):
    # Last resort (e.g. an interrupted run): no node outlives the session.
    harness.kill_all_started()


# --------------------------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def strata_bin() -> Path:
    value = os.environ.get("STRATA_BIN")
    if not value:
        pytest.fail(
            "STRATA_BIN is not set: point it at the strata binary "
            "(bash scripts/test.sh builds it and sets it).",
            pytrace=False,
        )
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"STRATA_BIN={value} is not an executable file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def admin_password() -> str:
    # A fresh, non-default password per run: proves it is the one the node was given.
    return "pw-" + secrets.token_urlsafe(18)


def venv_command(name: str) -> Path:
    """A command installed in the venv that runs these tests (STRATA_VENV, or this
    interpreter's); the test fails when it is not there."""
    venv = os.environ.get("STRATA_VENV")
    candidates = [Path(venv) / "bin" / name] if venv else []
    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(f"{name} not found (looked at {', '.join(map(str, candidates))})")


@pytest.fixture(scope="session")
def swift_cli() -> Path:
    """The `swift` command of python-swiftclient, from the venv that runs these tests."""
    return venv_command("swift")


def _cleanup(nodes: list[Node]) -> None:
    """Kills the nodes, then drops their data-dirs: every disk file is preallocated to its
    full capacity, so kept data-dirs would fill the machine's disk within a failing run.
    Configs and logs stay (logs also go into failure reports); STRATA_KEEP_DATA=1 keeps the
    data-dirs too, for a post-mortem."""
    try:
        for n in nodes:
            n.kill9()
    finally:
        _deactivate(nodes)
    if os.environ.get("STRATA_KEEP_DATA") != "1":
        for n in nodes:
            n.remove_data()


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_node(request, strata_bin, admin_password, tmp_path_factory):
    """One node on 127.0.0.1 with free ports, shared by the tests of a module."""
    yield from _running_node(
        _lone_node(strata_bin, admin_password, tmp_path_factory.mktemp("single"))
    )


@pytest.fixture
def small_disk_node(request, strata_bin, admin_password, tmp_path):
    """One node whose only disk holds 64 MiB, for tests that fill it."""
    yield from _running_node(
        _lone_node(strata_bin, admin_password, tmp_path / "small", disk_bytes=64 * 1024 * 1024)
    )


@pytest.fixture
def three_disk_node(request, strata_bin, admin_password, tmp_path):
    """One node alone with three disks of 256 MiB and three replicas (write quorum 2): every
    replica on its own disk."""
    yield from _running_node(
        _lone_node(
            strata_bin,
            admin_password,
            tmp_path / "three-disk",
            cluster=ClusterSettings(replicas=3, write_quorum=2),
            disk_bytes=256 * 1024 * 1024,
            disks=3,
        )
    )


def _lone_node(strata_bin, admin_password, workdir, **settings) -> Node:
    """Node 1 on 127.0.0.1 with free ports, alone in its cluster; `settings` go to `Node`."""
    return Node(
        binary=strata_bin,
        workdir=workdir,
        node_id=1,
        bind="127.0.0.1",
        password=admin_password,
        **settings,
    )


def _running_node(node: Node):
    """Starts `node`, yields it ready, and cleans up after (a fixture body)."""
    _activate([node])
    try:
        node.start()
        node.wait_ready()
        yield node
    finally:
        _cleanup([node])


def _running_cluster(request, c: Cluster):
    """Starts `c`, yields it ready, and cleans up after (a fixture body)."""
    _activate(c.nodes)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        _cleanup(c.nodes)


@pytest.fixture
def cluster(request, strata_bin, admin_password, tmp_path):
    """A fresh three-node cluster (replicas 3, write-quorum 2), started and ready."""
    yield from _running_cluster(
        request, Cluster(binary=strata_bin, workdir=tmp_path, password=admin_password)
    )


@pytest.fixture(scope="module")
def module_cluster(request, strata_bin, admin_password, tmp_path_factory):
    """A three-node cluster (replicas 3, write-quorum 2) shared by the tests of a module."""
    c = Cluster(
        binary=strata_bin, workdir=tmp_path_factory.mktemp("three"), password=admin_password
    )
    yield from _running_cluster(request, c)


@pytest.fixture(scope="module", params=["single", "three-node"])
def any_cluster_node(request):
    """The gateway node of a one-node cloud, then of node 1 of a three-node cluster."""
    if request.param == "single":
        return request.getfixturevalue("single_node")
    return request.getfixturevalue("module_cluster").node(1)
