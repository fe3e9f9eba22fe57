"""One node, driven by the real OpenStack clients: the `swift` command line (TempAuth and
Keystone v3) and the python-swiftclient library."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from swiftclient.client import ClientException

from harness import ADMIN_DOMAIN, ADMIN_PROJECT, ADMIN_USER, MiB, Node, payload


def unique(prefix: str) -> str:
    # The node is shared by this module's tests, so every test uses its own containers.
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# The swift command line
# --------------------------------------------------------------------------------------------


def auth_args(node: Node, auth: str) -> list[str]:
    if auth == "tempauth":
        return ["-A", node.tempauth_url, "-U", f"{ADMIN_PROJECT}:{ADMIN_USER}", "-K", node.password]
    assert auth == "keystone-v3"
    return [
        "--auth-version", "3",
        "--os-auth-url", node.keystone_url,
        "--os-username", ADMIN_USER,
        "--os-password", node.password,
        "--os-project-name", ADMIN_PROJECT,
        "--os-user-domain-name", ADMIN_DOMAIN,
        "--os-project-domain-name", ADMIN_DOMAIN,
    ]  # fmt: skip


def cli_env() -> dict[str, str]:
    # Only the command line chooses the credentials: no OS_*/ST_* settings from outside.
    return {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_"))}


def run_swift(swift_cli: Path, node: Node, auth: str, *args: str, cwd: Path) -> str:
    # --retries 0: a failing request fails the command instead of being retried quietly.
    cmd = [str(swift_cli), *auth_args(node, auth), "--retries", "0", *args]
    p = subprocess.run(
        cmd,
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if p.returncode != 0:
        shown = " ".join(a if a != node.password else "***" for a in cmd)
        pytest.fail(
            f"`{shown}` exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}",
            pytrace=False,
        )
    return p.stdout


def parse_stat(text: str) -> dict[str, str]:
    """`swift stat` prints `Key: value` lines."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def make_tree(root: Path) -> dict[str, bytes]:
    """A small directory tree under root/tree; returns object name -> content, where the
    object name is the path relative to `root` (as `swift upload C tree` names them)."""
    files = {
        "tree/empty.bin": b"",
        "tree/small.txt": payload(1, 1000),
        "tree/big.bin": payload(2, 3 * MiB),
        "tree/sub/block.bin": payload(3, 65536 + 1),
        "tree/sub/deeper/leaf.bin": payload(4, 12345),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.parametrize("auth", ["tempauth", "keystone-v3"])
def test_cli_upload_list_download_stat(single_node, swift_cli, tmp_path, auth):
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    files = make_tree(src)
    container = unique(f"cli-{auth}")

    def swift(*args: str, cwd: Path = tmp_path) -> str:
        return run_swift(swift_cli, single_node, auth, *args, cwd=cwd)

    swift("upload", container, "tree", cwd=src)

    listed = swift("list", container).split()
    assert sorted(listed) == sorted(files)
    assert container in swift("list").split()

    # The CLI itself also checks every download's MD5 against its ETag.
    swift("download", container, "--output-dir", str(dst))
    for name, data in files.items():
        got = (dst / name).read_bytes()
        assert got == data, f"{name}: downloaded {len(got)} bytes, not the {len(data)} uploaded"
    downloaded = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert downloaded == sorted(files)

    stat = parse_stat(swift("stat", container))
    assert stat.get("Container") == container
    assert int(stat["Objects"]) == len(files)
    assert int(stat["Bytes"]) == sum(len(d) for d in files.values())

    account = parse_stat(swift("stat"))
    assert account.get("Account", "").startswith("AUTH_")
    assert int(account["Containers"]) >= 1
    assert int(account["Objects"]) >= len(files)


# --------------------------------------------------------------------------------------------
# python-swiftclient
# --------------------------------------------------------------------------------------------


def test_chunked_put_etag_and_metadata(single_node):
    conn = single_node.connection()
    container = unique("chunked")
    conn.put_container(container)

    # A generator: swiftclient sends it with Transfer-Encoding: chunked (no Content-Length).
    data = payload(10, 2 * MiB + 777)
    step = 100_000
    etag = conn.put_object(
        container,
        "from-generator",
        (data[i : i + step] for i in range(0, len(data), step)),
        content_type="application/x-test",
        headers={"X-Object-Meta-Color": "blue", "X-Object-Meta-Two-Words": "hello world"},
    )
    assert etag == hashlib.md5(data).hexdigest()

    head = conn.head_object(container, "from-generator")
    assert head["etag"].strip('"') == etag
    assert int(head["content-length"]) == len(data)
    assert head["content-type"] == "application/x-test"
    assert head["x-object-meta-color"] == "blue"
    assert head["x-object-meta-two-words"] == "hello world"

    hdrs, body = conn.get_object(container, "from-generator")
    assert body == data
    assert hdrs["x-object-meta-color"] == "blue"

    # A file-like object without a length: read in chunk_size pieces, also sent chunked.
    data2 = payload(11, 300_001)
    etag2 = conn.put_object(container, "from-file", io.BytesIO(data2), chunk_size=65536)
    assert etag2 == hashlib.md5(data2).hexdigest()
    assert conn.get_object(container, "from-file")[1] == data2

    # An empty chunked body is an empty object.
    etag3 = conn.put_object(container, "empty", iter([]))
    assert etag3 == hashlib.md5(b"").hexdigest()
    assert int(conn.head_object(container, "empty")["content-length"]) == 0


def test_listing_prefix_marker_limit(single_node):
    conn = single_node.connection()
    container = unique("listing")
    conn.put_container(container)
    names = ["a/1", "a/2", "a/3", "b/1", "b/2", "c"]
    for n in names:
        conn.put_object(container, n, n.encode())

    def listed(**kw) -> list[str]:
        return [o["name"] for o in conn.get_container(container, **kw)[1]]

    assert listed() == names
    assert listed(prefix="a/") == ["a/1", "a/2", "a/3"]
    assert listed(marker="a/3") == ["b/1", "b/2", "c"]
    assert listed(limit=2) == ["a/1", "a/2"]
    assert listed(prefix="a/", marker="a/1") == ["a/2", "a/3"]
    assert listed(prefix="b/", limit=1) == ["b/1"]
    assert listed(marker="b/1", limit=2) == ["b/2", "c"]
    assert listed(prefix="zzz") == []
    # full_listing pages through with marker+limit the way the clients do.
    assert listed(full_listing=True, limit=2) == names

    entry = next(o for o in conn.get_container(container, prefix="c")[1])
    assert entry["bytes"] == 1
    assert entry["hash"] == hashlib.md5(b"c").hexdigest()


def test_delete_updates_counts_and_nonempty_container_conflicts(single_node):
    conn = single_node.connection()
    container = unique("delete")
    conn.put_container(container)
    conn.put_object(container, "keep", b"k" * 10)
    conn.put_object(container, "gone", b"g" * 25)

    account_before = conn.head_account()
    cont_before = conn.head_container(container)
    assert int(cont_before["x-container-object-count"]) == 2
    assert int(cont_before["x-container-bytes-used"]) == 35

    conn.delete_object(container, "gone")

    # The delete shows at once, in the listing and in both counts.
    assert [o["name"] for o in conn.get_container(container)[1]] == ["keep"]
    cont_after = conn.head_container(container)
    assert int(cont_after["x-container-object-count"]) == 1
    assert int(cont_after["x-container-bytes-used"]) == 10
    account_after = conn.head_account()
    assert (
        int(account_after["x-account-object-count"])
        == int(account_before["x-account-object-count"]) - 1
    )
    assert (
        int(account_after["x-account-bytes-used"])
        == int(account_before["x-account-bytes-used"]) - 25
    )
    with pytest.raises(ClientException) as e:
        conn.get_object(container, "gone")
    assert e.value.http_status == 404

    with pytest.raises(ClientException) as e:
        conn.delete_container(container)
    assert e.value.http_status == 409
    assert conn.head_container(container)  # still there

    conn.delete_object(container, "keep")
    conn.delete_container(container)
    with pytest.raises(ClientException) as e:
        conn.head_container(container)
    assert e.value.http_status == 404


def test_metadata_round_trip(single_node):
    conn = single_node.connection()
    container = unique("meta")

    conn.post_account({"X-Account-Meta-Color": "blue", "X-Account-Meta-Gone": "soon"})
    conn.post_account({"X-Remove-Account-Meta-Gone": "x"})
    head = conn.head_account()
    assert head["x-account-meta-color"] == "blue"
    assert "x-account-meta-gone" not in head

    conn.put_container(container, headers={"X-Container-Meta-Owner": "ops"})
    conn.post_container(container, {"X-Container-Meta-Tier": "gold"})
    conn.post_container(container, {"X-Remove-Container-Meta-Owner": "x"})
    head = conn.head_container(container)
    assert head["x-container-meta-tier"] == "gold"
    assert "x-container-meta-owner" not in head

    conn.put_object(container, "o", b"body", headers={"X-Object-Meta-A": "1"})
    # Object POST replaces the whole set of user metadata, as in Swift.
    conn.post_object(container, "o", {"X-Object-Meta-B": "2"})
    head = conn.head_object(container, "o")
    assert head["x-object-meta-b"] == "2"
    assert "x-object-meta-a" not in head
    assert conn.get_object(container, "o")[1] == b"body"

    with pytest.raises(ClientException) as e:
        conn.post_container(container, {"X-Container-Meta-" + "n" * 129: "v"})
    assert e.value.http_status == 400


def test_ranges_and_conditionals(single_node):
    conn = single_node.connection()
    container = unique("range")
    conn.put_container(container)
    data = payload(7, 3 * MiB + 17)
    etag = conn.put_object(container, "o", data)

    headers, body = conn.get_object(container, "o", headers={"Range": "bytes=1048570-1048589"})
    assert body == data[1048570:1048590]
    assert headers["content-range"] == f"bytes 1048570-1048589/{len(data)}"
    _, body = conn.get_object(container, "o", headers={"Range": "bytes=-100"})
    assert body == data[-100:]
    _, body = conn.get_object(container, "o", headers={"Range": f"bytes={len(data) - 5}-"})
    assert body == data[-5:]
    with pytest.raises(ClientException) as e:
        conn.get_object(container, "o", headers={"Range": f"bytes={len(data)}-"})
    assert e.value.http_status == 416

    with pytest.raises(ClientException) as e:
        conn.get_object(container, "o", headers={"If-Match": '"nope"'})
    assert e.value.http_status == 412
    # swiftclient raises on anything outside 2xx, 304 included.
    with pytest.raises(ClientException) as e:
        conn.get_object(container, "o", headers={"If-None-Match": etag})
    assert e.value.http_status == 304
    headers, body = conn.get_object(container, "o", headers={"If-Match": etag, "Range": "bytes=0-3"})
    assert body == data[:4]
    with pytest.raises(ClientException) as e:
        conn.put_object(container, "bad", b"abc", etag="0" * 32)
    assert e.value.http_status == 422
    with pytest.raises(ClientException) as e:
        conn.head_object(container, "bad")
    assert e.value.http_status == 404


def test_listing_formats_and_delimiter(single_node):
    conn = single_node.connection()
    container = unique("fmt")
    conn.put_container(container)
    for n in ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/2025/c.jpg", "readme", "z&<>"]:
        conn.put_object(container, n, b"x")

    rows = conn.get_container(container, delimiter="/")[1]
    assert [r.get("subdir", r.get("name")) for r in rows] == ["photos/", "readme", "z&<>"]
    rows = conn.get_container(container, prefix="photos/", delimiter="/")[1]
    assert [r["subdir"] for r in rows] == ["photos/2024/", "photos/2025/"]

    url, token = conn.get_auth()
    r = requests.get(f"{url}/{container}", params={"format": "xml"}, headers={"X-Auth-Token": token})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    assert "<name>z&amp;&lt;&gt;</name>" in r.text
    r = requests.get(f"{url}/{container}", headers={"X-Auth-Token": token})
    assert r.text.splitlines() == ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/2025/c.jpg", "readme", "z&<>"]
    r = requests.get(f"{url}/{container}", params={"limit": "10001"}, headers={"X-Auth-Token": token})
    assert r.status_code == 412
    r = requests.get(f"{url}/{container}", headers={})
    assert r.status_code == 401
