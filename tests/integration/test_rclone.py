"""rclone (Debian's package) against Strata's Swift API, on one node and on three.

A tree with nested directories, empty files, UTF-8 names and files larger than rclone's
chunk size (uploaded as segments plus a manifest) is synced; `rclone check` (hashes, then
bytes) finds no differences; a changed tree syncs again; `rclone delete` and `rclone purge`
leave the account without objects or containers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import ADMIN_DOMAIN, ADMIN_PROJECT, ADMIN_USER, MiB, Node, payload

REMOTE = "strata"
CHUNK = "1Mi"

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed")


def rclone_env(node: Node, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "OS_", "ST_"))}
    prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
    env.update(
        {
            "RCLONE_CONFIG": str(config),
            prefix + "TYPE": "swift",
            prefix + "AUTH": node.keystone_url,
            prefix + "AUTH_VERSION": "3",
            prefix + "USER": ADMIN_USER,
            prefix + "KEY": node.password,
            prefix + "DOMAIN": ADMIN_DOMAIN,
            prefix + "TENANT": ADMIN_PROJECT,
            prefix + "TENANT_DOMAIN": ADMIN_DOMAIN,
            prefix + "CHUNK_SIZE": CHUNK,
        }
    )
    return env


class Rclone:
    def __init__(self, node: Node, workdir: Path):
        config = workdir / "rclone.conf"
        config.write_text("")
        self.env = rclone_env(node, config)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["rclone", "--retries", "1", "--low-level-retries", "1", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"rclone {' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            )
        return p


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "top.txt": b"top level\n",
        "empty-at-top": b"",
        "a/b/c/deep.bin": payload(1, 100_000),
        "a/b/empty": b"",
        "a/sibling.txt": b"sibling\n",
        "ünïcödé/日本語のファイル.txt": "こんにちは\n".encode(),
        "spaces in name/file with spaces.dat": payload(2, 5000),
        "emoji 🎉/party 🎈.txt": b"party\n",
        "big/larger-than-chunk.bin": payload(3, 3 * MiB + 12345),
        "big/exactly-two-chunks.bin": payload(4, 2 * MiB),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def remote_files(rc: Rclone, container: str) -> list[str]:
    out = rc.run("lsf", "-R", "--files-only", f"{REMOTE}:{container}").stdout
    return sorted(line for line in out.splitlines() if line)


def account_containers(node: Node) -> list[str]:
    _, containers = node.connection().get_account(full_listing=True)
    return sorted(c["name"] for c in containers)


def test_sync_check_delete_purge(any_cluster_node: Node, tmp_path: Path):
    node = any_cluster_node
    rc = Rclone(node, tmp_path)
    src = tmp_path / "src"
    files = make_tree(src)
    container = f"rclone-{uuid.uuid4().hex[:8]}"
    before = set(account_containers(node))

    rc.run("sync", str(src), f"{REMOTE}:{container}")
    assert remote_files(rc, container) == sorted(files)
    check = rc.run("check", str(src), f"{REMOTE}:{container}")
    assert "0 differences found" in check.stderr, check.stderr
    rc.run("check", "--download", str(src), f"{REMOTE}:{container}")

    # The large file went up in segments: its manifest reads back whole and byte-exact.
    dst = tmp_path / "copy-back"
    rc.run("copy", f"{REMOTE}:{container}", str(dst))
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data, rel

    # Change the tree: one file removed, one rewritten, one added; sync mirrors all three.
    (src / "a/sibling.txt").unlink()
    (src / "big/larger-than-chunk.bin").write_bytes(payload(5, 2 * MiB + 1))
    (src / "new/added.txt").parent.mkdir()
    (src / "new/added.txt").write_bytes(b"added\n")
    rc.run("sync", str(src), f"{REMOTE}:{container}")
    expected = sorted(
        str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()
    )
    assert remote_files(rc, container) == expected
    rc.run("check", "--download", str(src), f"{REMOTE}:{container}")

    rc.run("delete", f"{REMOTE}:{container}")
    assert remote_files(rc, container) == []
    # Deleting a large object deleted its segments too: none is left behind. rclone keeps
    # the `<container>_segments` container itself (as against any Swift); purge it as well.
    segments = f"{container}_segments"
    assert segments in account_containers(node)
    assert remote_files(rc, segments) == []
    rc.run("purge", f"{REMOTE}:{container}")
    rc.run("purge", f"{REMOTE}:{segments}")
    left = set(account_containers(node)) - before
    assert not left, f"containers left after purge: {sorted(left)}"
    if not before:
        headers = node.connection().head_account()
        assert headers["x-account-object-count"] == "0", headers
        assert headers["x-account-bytes-used"] == "0", headers
