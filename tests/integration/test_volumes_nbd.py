"""Block volumes over NBD on a real node, checked with tools nobody here wrote: qemu-img,
qemu-io and nbdinfo."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time

import pytest

from harness import MiB

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "qemu-io", "nbdinfo")),
    reason="qemu-img, qemu-io and nbdinfo are needed (scripts/setup.sh installs them)",
)


def run(*cmd: str, timeout: float = 300) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_qemu_img_round_trip_is_byte_exact(single_node, tmp_path):
    single_node.admin("volume", "create", "roundtrip", "256M")
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(256 * MiB))
    url = single_node.nbd_url("roundtrip")
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url)
    back = tmp_path / "back.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back))
    assert back.stat().st_size == 256 * MiB
    with open(src, "rb") as a, open(back, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(MiB), b.read(MiB)
            assert x == y, f"first difference in the MiB at offset {offset}"
            if not x:
                break
            offset += MiB


def test_qemu_io_patterns_at_odd_offsets(single_node):
    single_node.admin("volume", "create", "patterns", "64M")
    url = single_node.nbd_url("patterns")
    cases = [(12345, 70000, "0xab"), (4095, 2, "0x11"), (8191, 4098, "0x22"),
             (MiB - 1, MiB + 1, "0x33"), (60 * MiB + 7, 3 * MiB, "0x44")]  # fmt: skip
    for offset, length, pat in cases:
        out = run("qemu-io", "-f", "raw", url,
                  "-c", f"write -P {pat} {offset} {length}",
                  "-c", f"read -P {pat} {offset} {length}")  # fmt: skip
        assert "Pattern verification failed" not in out, out
    # A later connection sees every pattern, and the bytes between them are untouched.
    for offset, length, pat in cases[2:]:
        out = run("qemu-io", "-f", "raw", url, "-c", f"read -P {pat} {offset} {length}")
        assert "Pattern verification failed" not in out, out
    out = run("qemu-io", "-f", "raw", url, "-c", f"read -P 0 {20 * MiB} {MiB}")
    assert "Pattern verification failed" not in out, out


def test_the_unix_socket_serves_the_same_exports(single_node):
    single_node.admin("volume", "create", "viaunix", "16M")
    tcp, unix = single_node.nbd_url("viaunix"), single_node.nbd_unix_url("viaunix")
    run("qemu-io", "-f", "raw", unix, "-c", f"write -P 0x6c {3 * MiB + 5} 9000")
    out = run("qemu-io", "-f", "raw", tcp, "-c", f"read -P 0x6c {3 * MiB + 5} 9000")
    assert "Pattern verification failed" not in out, out
    info = json.loads(run("nbdinfo", "--json", unix))
    assert info["exports"][0]["export-size"] == 16 * MiB, info


def test_nbdinfo_map_shows_holes_for_unwritten_ranges(single_node):
    single_node.admin("volume", "create", "sparse", "32M")
    url = single_node.nbd_url("sparse")
    run("qemu-io", "-f", "raw", url, "-c", f"write -P 0x5a {8 * MiB} {MiB}")
    extents = json.loads(run("nbdinfo", "--json", "--map", url))
    # Merge adjacent extents of the same kind: the server may split at 4 MiB boundaries.
    merged: list[tuple[int, int, bool]] = []
    for e in extents:
        hole = "hole" in e.get("description", "")
        if merged and merged[-1][2] == hole and merged[-1][0] + merged[-1][1] == e["offset"]:
            start, length, _ = merged[-1]
            merged[-1] = (start, length + e["length"], hole)
        else:
            merged.append((e["offset"], e["length"], hole))
    assert merged == [(0, 8 * MiB, True), (8 * MiB, MiB, False), (9 * MiB, 23 * MiB, True)], extents
    listed = run("nbdinfo", "--list", "--json", f"nbd://{single_node.bind}:{single_node.ports.nbd}")
    names = {e["export-name"] for e in json.loads(listed)["exports"]}
    assert "sparse" in names, names


def test_write_back_cache_reads_its_writes_and_flush_survives_kill9(single_node):
    """Writes are acknowledged from the node's write-back cache. fio writes every block of a
    range at queue depth 32 and reads each back with crc32c verification while the writeback
    runs; qemu-io then writes and closes (which sends FLUSH), the node is killed with SIGKILL,
    and after a restart every flushed byte reads back."""
    single_node.admin("volume", "create", "cached", "64M")
    url = single_node.nbd_url("cached")
    run("fio", "--name=verify", "--ioengine=nbd", f"--uri={url}", "--rw=randwrite",
        "--bs=4k", "--iodepth=32", "--size=32M", "--randrepeat=0", "--verify=crc32c",
        "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
        "--output-format=json")  # fmt: skip
    cases = [(40 * MiB + 512, 3 * MiB, "0x5c"), (33 * MiB - 4096, 8192, "0x6d")]
    for offset, length, pat in cases:
        run("qemu-io", "-f", "raw", url, "-c", f"write -P {pat} {offset} {length}")
    single_node.kill9()
    single_node.start()
    single_node.wait_ready()
    for offset, length, pat in cases:
        out = run("qemu-io", "-f", "raw", url, "-c", f"read -P {pat} {offset} {length}")
        assert "Pattern verification failed" not in out, out


def test_idle_disks_straighten_what_random_writes_scattered(single_node):
    """Every 4 KiB block of a volume written once, in shuffled order, each with its own
    pattern: the blocks land scattered on disk. Once the volume is idle the node rewrites
    them side by side without anyone reading them, and every block still reads as written,
    also after a SIGKILL and restart. (Reads that find a range scattered straighten it too:
    the disk engine's conformance tests cover that.)"""
    single_node.admin("volume", "create", "scatter", "32M")
    url = single_node.nbd_url("scatter")
    blocks = list(range(32 * MiB // 4096))
    random.Random(5).shuffle(blocks)
    pattern = {b: 1 + (b * 37) % 251 for b in blocks}
    before = sum(d["relocated_bytes"] for d in single_node.disks())
    writes = [a for b in blocks for a in ("-c", f"write -P {pattern[b]} {b * 4096} 4k")]
    run("qemu-io", "-f", "raw", url, *writes, "-c", "flush")
    deadline = time.monotonic() + 30
    while True:
        disks = single_node.disks()
        relocated = sum(d["relocated_bytes"] for d in disks) - before
        pending = sum(d["straighten_pending_bytes"] for d in disks)
        if relocated >= 16 * MiB and not pending:
            break
        assert time.monotonic() < deadline, (
            f"relocated {relocated} bytes of a scattered 32 MiB volume, "
            f"{pending} bytes still to look at"
        )
        time.sleep(0.2)

    def check():
        reads = [a for b in sorted(blocks) for a in ("-c", f"read -P {pattern[b]} {b * 4096} 4k")]
        out = run("qemu-io", "-f", "raw", url, *reads)
        assert "Pattern verification failed" not in out, out

    check()
    single_node.kill9()
    single_node.start()
    single_node.wait_ready()
    check()


def test_a_full_disk_answers_enospc_and_recovers(small_disk_node):
    """A volume larger than its node's 64 MiB disk. Writes past the space fail with
    NBD_ENOSPC, not EIO: QEMU's default `werror=enospc` pauses the guest on it instead of
    failing the guest's write. What was written before stays readable, and once space is
    freed (here by discarding the range that failed) writes go through again."""
    node = small_disk_node
    node.admin("volume", "create", "full", "128M")
    url = node.nbd_url("full")
    run("qemu-io", "-f", "raw", url, "-c", f"write -P 0x21 0 {8 * MiB}", "-c", "flush")
    p = subprocess.run(
        ["qemu-io", "-f", "raw", url,
         "-c", f"write -P 0x42 {8 * MiB} {96 * MiB}", "-c", "flush"],  # fmt: skip
        capture_output=True, text=True, timeout=300,
    )
    out = p.stdout + p.stderr
    assert "No space left on device" in out, out
    assert "Input/output error" not in out, out
    assert node.running(), "the node died when its disk filled"
    out = run("qemu-io", "-f", "raw", url, "-c", f"read -P 0x21 0 {8 * MiB}")
    assert "Pattern verification failed" not in out, out
    run("qemu-io", "-f", "raw", url, "-c", f"discard {8 * MiB} {96 * MiB}")
    out = run("qemu-io", "-f", "raw", url,
              "-c", f"write -P 0x63 {8 * MiB} {16 * MiB}", "-c", "flush",
              "-c", f"read -P 0x63 {8 * MiB} {16 * MiB}", "-c", f"read -P 0x21 0 {8 * MiB}")  # fmt: skip
    assert "Pattern verification failed" not in out, out


def test_bench_block_runs_the_plan_against_any_export(single_node, strata_bin):
    """`strata bench block` drives fio's nbd engine against an export it is given: the
    prefill, then the jobs asked for, with the server's CPU per I/O; an unknown job is
    refused before anything is written."""
    single_node.admin("volume", "create", "benched", "64M")
    url = single_node.nbd_url("benched")
    jobs = ["randread-4k-qd32", "randwrite-4k-qd1-flush", "seqwrite-1m-qd8"]
    out = run(str(strata_bin), "bench", "block", "--uri", url, "--size", "64m",
              "--runtime", "1", "--jobs", ",".join(jobs), "--server-pid", str(single_node.pid),
              "--json")  # fmt: skip
    results = json.loads(out)
    assert [r["job"] for r in results] == jobs, results
    for r in results:
        assert r["iops"] > 0 and r["mib_per_s"] > 0, r
        assert r["lat_p50_ms"] <= r["lat_p99_ms"] <= r["lat_p999_ms"], r
        assert r["server_cpu_ms_per_op"] is not None and r["server_cpu_ms_per_op"] > 0, r
    bad = subprocess.run([str(strata_bin), "bench", "block", "--uri", url, "--jobs", "nope"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "no job" in bad.stderr, bad
