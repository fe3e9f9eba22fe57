"""Checks of the test harness itself (config files, ports, process control); these need no
strata binary and run in seconds."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
import tomllib
from pathlib import Path

import pytest

from harness import CLUSTER_ADDRS, DISK_BYTES, Cluster, Node, NodeError, free_ports

# The keys `strata serve --config` accepts (it refuses unknown ones).
TOP_KEYS = {"node-id", "zone", "data-dir", "bind", "public-host", "ports", "admin-password",
            "disks", "cluster"}  # fmt: skip
PORT_KEYS = {"keystone", "swift", "rpc", "nbd", "cinder", "compute", "glance"}
DISK_KEYS = {"path", "device", "capacity-bytes", "weight"}
CLUSTER_KEYS = {"replicas", "write-quorum", "part-power", "nodes"}
MEMBER_KEYS = {"id", "rpc", "zone", "disks", "weight"}


@pytest.mark.parametrize("host", ["127.0.0.1", *CLUSTER_ADDRS])
def test_free_ports_are_distinct_and_bindable(host):
    first = free_ports(host, 6)
    second = free_ports(host, 6)
    assert len(set(first + second)) == 12
    for port in first + second:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
            s.listen()


def test_free_ports_refuse_addresses_off_loopback():
    with pytest.raises(ValueError):
        free_ports("192.0.2.1", 1)


def test_cluster_configs(tmp_path):
    c = Cluster(binary=Path("/nonexistent/strata"), workdir=tmp_path, password="pw")
    configs = [tomllib.loads(n.config_path.read_text()) for n in c.nodes]

    all_ports = [p for n in c.nodes for p in dataclasses.astuple(n.ports)]
    assert len(set(all_ports)) == len(all_ports)

    for i, (node, cfg) in enumerate(zip(c.nodes, configs), start=1):
        assert set(cfg) <= TOP_KEYS
        assert set(cfg["ports"]) <= PORT_KEYS
        assert set(cfg["cluster"]) <= CLUSTER_KEYS
        assert cfg["node-id"] == i
        assert cfg["bind"] == CLUSTER_ADDRS[i - 1]
        assert cfg["zone"] == f"zone{i}"
        data_dir = Path(cfg["data-dir"])
        assert data_dir.is_absolute() and data_dir.is_relative_to(tmp_path)
        assert cfg["ports"] == {
            "keystone": node.ports.keystone,
            "swift": node.ports.swift,
            "rpc": node.ports.rpc,
            "nbd": node.ports.nbd,
            "cinder": node.ports.cinder,
            "compute": node.ports.compute,
            "glance": node.ports.glance,
        }
        [disk] = cfg["disks"]
        assert set(disk) <= DISK_KEYS
        assert disk == {"path": "disk0", "capacity-bytes": DISK_BYTES}
        assert DISK_BYTES == 1 << 30
        cl = cfg["cluster"]
        assert (cl["replicas"], cl["write-quorum"], cl["part-power"]) == (3, 2, 8)
        assert len(cl["nodes"]) == 3
        for m, other in zip(cl["nodes"], c.nodes):
            assert set(m) <= MEMBER_KEYS
            assert m == {
                "id": other.node_id,
                "rpc": f"{other.bind}:{other.ports.rpc}",
                "zone": f"zone{other.node_id}",
            }
    # Every node states the same cluster.
    assert all(cfg["cluster"] == configs[0]["cluster"] for cfg in configs)


def test_single_node_config(tmp_path):
    node = Node(binary=Path("/nonexistent"), workdir=tmp_path, node_id=1, bind="127.0.0.1",
                password="pw")  # fmt: skip
    cfg = tomllib.loads(node.config_path.read_text())
    assert cfg["bind"] == "127.0.0.1"
    assert cfg["cluster"] == {"replicas": 1, "write-quorum": 1, "part-power": 8}


def stand_in(tmp_path: Path, body: str) -> Path:
    """An executable that takes the place of the server binary."""
    exe = tmp_path / "stand-in"
    exe.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    exe.chmod(0o755)
    return exe


def wait_for_log(node: Node, text: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while node.log_path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times"
        time.sleep(0.05)


def test_kill9_and_restart(tmp_path):
    exe = stand_in(tmp_path, "print('up', sys.argv[1:], flush=True)\ntime.sleep(600)")
    node = Node(binary=exe, workdir=tmp_path / "w", node_id=1, bind="127.0.0.1", password="pw")
    started = f"up ['serve', '--config', '{node.config_path}']"
    try:
        node.start()
        first_pid = node.pid
        assert node.running()
        wait_for_log(node, started, 1)
        node.kill9()
        assert not node.running()
        assert node.proc.returncode == -9
        node.kill9()  # no-op once dead

        node.start()
        assert node.running() and node.pid != first_pid
        wait_for_log(node, started, 2)
    finally:
        node.kill9()
    assert node.log_path.read_text().count("===== start #") == 2


def test_wait_ready_fails_fast_when_the_process_dies(tmp_path):
    exe = stand_in(tmp_path, "print('cannot start', flush=True)\nsys.exit(3)")
    node = Node(binary=exe, workdir=tmp_path / "w", node_id=1, bind="127.0.0.1", password="pw")
    try:
        node.start()
        with pytest.raises(NodeError, match=r"exit code 3[\s\S]*cannot start"):
            node.wait_ready(timeout=30)
    finally:
        node.kill9()
