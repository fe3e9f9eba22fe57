"""A volume on three nodes (replicas 3, write-quorum 2) while one replica node is killed by
SIGKILL under a qemu-io write-and-flush loop: every write acknowledged before its FLUSH
completed reads back, and the killed node, once restarted, is resynced until it alone
serves every one of them."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from harness import MiB, Node

pytestmark = pytest.mark.skipif(
    not shutil.which("qemu-io"), reason="qemu-io is needed (scripts/setup.sh installs it)"
)

VOLUME = "replicated"
VOLUME_MIB = 64
STRIDE = 64 * 1024  # one write per stride: writes never overlap
WRITE_BYTES = 8192


def qemu_io(url: str, *commands: str, timeout: float = 120) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw", url]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> bool:
    out = p.stdout + p.stderr
    return p.returncode == 0 and "error" not in out.lower() and "failed" not in out.lower()


def wait_export(node: Node, timeout: float = 30) -> str:
    """The volume's NBD URL on `node`, once the node serves it."""
    url = node.nbd_url(VOLUME)
    deadline = time.monotonic() + timeout
    while not ok(qemu_io(url, "read 0 4096")):
        assert time.monotonic() < deadline, f"{node.name} does not export {VOLUME}"
        time.sleep(0.2)
    return url


def write_cmd(i: int) -> tuple[int, int, str]:
    offset = i * STRIDE + (i % 7) * 513  # odd offsets, crossing 4 KiB blocks
    pattern = i % 250 + 1
    return offset, pattern, f"write -P {pattern} {offset} {WRITE_BYTES}"


def verify(url: str, acked: list[tuple[int, int]]) -> None:
    """Every acknowledged write reads back (in batches of qemu-io commands)."""
    for start in range(0, len(acked), 100):
        batch = acked[start : start + 100]
        p = qemu_io(url, *[f"read -P {pat} {off} {WRITE_BYTES}" for off, pat in batch])
        assert ok(p), f"reading acknowledged writes through {url}:\n{p.stdout[-2000:]}{p.stderr}"


def test_replica_killed_under_writes_keeps_acked_data_and_resyncs(cluster):
    n1, n2, n3 = cluster.nodes
    n1.admin("volume", "create", VOLUME, f"{VOLUME_MIB}M")
    url = wait_export(n1)

    acked: list[tuple[int, int]] = []
    failed: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and (i + 1) * STRIDE <= VOLUME_MIB * MiB:
            offset, pattern, cmd = write_cmd(i)
            p = qemu_io(url, cmd, "flush")
            if ok(p):
                acked.append((offset, pattern))
            else:
                failed.append(f"write {i}: {p.stdout}{p.stderr}")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(3)
        before_kill = len(acked)
        n3.kill9()
        time.sleep(5)
    finally:
        stop.set()
        t.join(timeout=120)
    after_kill = len(acked) - before_kill
    assert before_kill > 0 and after_kill > 0, (before_kill, after_kill)
    # A node down degrades the volume; it does not fail writes.
    assert not failed, failed[:3]
    verify(url, acked)
    assert "replica left the in-sync set" in n1.log_path.read_text()

    # The restarted node copies back what it missed, then leaves the stale list.
    n3.start()
    n3.wait_ready()
    deadline = time.monotonic() + 180
    while "replica back in sync" not in n3.log_path.read_text():
        assert time.monotonic() < deadline, "node3 did not resync the volume"
        time.sleep(0.5)

    # Proof that node3's copy is whole: with the other two gone, it alone serves every write.
    n1.kill9()
    n2.kill9()
    verify(wait_export(n3), acked)
