"""The Image API (Glance v2) on one node: the real `openstack image ...` commands, volumes
created from images (copy-on-write clones, read back over NBD with qemu-img and qemu-io),
and raw v2 calls for Glance's rules on formats, JSON-patch, tags, members, visibility,
deactivation and ranged downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness import ADMIN_PROJECT, ADMIN_USER, MiB, Node
from osc import Cred, Osc, expect, keystone_token, openstack_cli, unique  # noqa: F401 (a fixture)

GiB = 1 << 30
PATCH = "application/openstack-images-v2.1-json-patch"

needs_qemu = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "qemu-io")),
    reason="qemu-img and qemu-io are needed (scripts/setup.sh installs them)",
)


@dataclass
class Cloud:
    node: Node
    admin: Osc
    member: Osc  # a member of project P
    project_id: str  # P
    other_project_id: str  # Q
    tokens: dict[str, str]  # "member", "reader", "other", "admin" -> token

    def glance(self, who: str = "member") -> "Api":
        return Api(f"{self.node.image_url}/v2", self.tokens.get(who))

    def cinder(self, who: str = "member") -> "Api":
        project = self.other_project_id if who == "other" else self.project_id
        return Api(f"{self.node.cinder_url}/v3/{project}", self.tokens.get(who))


class Api:
    def __init__(self, base: str, token: str | None):
        self.base, self.token = base, token

    def __call__(self, method: str, path: str, body=None, data=None, **headers):
        h = {"X-Auth-Token": self.token} if self.token else {}
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        kw = {"json": body} if data is None else {"data": data}
        return requests.request(method, f"{self.base}/{path}", headers=h, timeout=120, **kw)

    def patch(self, image_id: str, ops: list) -> requests.Response:
        return self("PATCH", f"images/{image_id}", data=__import__("json").dumps(ops),
                    Content_Type=PATCH)  # fmt: skip

    def upload(self, image_id: str, data: bytes) -> requests.Response:
        return self("PUT", f"images/{image_id}/file", data=data,
                    Content_Type="application/octet-stream")  # fmt: skip


@pytest.fixture(scope="module")
def cloud(single_node, openstack_cli, tmp_path_factory) -> Cloud:
    cwd = tmp_path_factory.mktemp("osc")
    admin = Osc(
        openstack_cli, single_node, Cred(ADMIN_USER, single_node.password, ADMIN_PROJECT), cwd
    )
    p_name, other_name = unique("imgs"), unique("elsewhere")
    project = admin.json("project", "create", p_name)
    other = admin.json("project", "create", other_name)
    creds = {}
    for who, role, proj in [("member", "member", p_name), ("reader", "reader", p_name),
                            ("other", "member", other_name)]:  # fmt: skip
        name, password = unique(f"u-{who}"), "pw-" + uuid.uuid4().hex
        admin("user", "create", "--password", password, name)
        admin("role", "add", "--project", proj, "--user", name, role)
        creds[who] = Cred(name, password, proj)
    tokens = {who: keystone_token(single_node, c)[0] for who, c in creds.items()}
    tokens["admin"] = keystone_token(single_node, admin.cred)[0]
    member = Osc(openstack_cli, single_node, creds["member"], cwd)
    return Cloud(single_node, admin, member, project["id"], other["id"], tokens)


def run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def connect(api: Api, volume_id: str) -> str:
    r = expect(api("POST", f"volumes/{volume_id}/action",
                   {"os-initialize_connection": {"connector": {"host": "test"}}}), 200)  # fmt: skip
    d = r.json()["connection_info"]["data"]
    return f"nbd://{d['host']}:{d['port']}/{d['export_name']}"


def image_bytes() -> bytes:
    """A raw disk image of an odd size: random data, a 4 MiB zero run (a hole), a tail."""
    return os.urandom(5 * MiB + 123) + bytes(4 * MiB) + os.urandom(3 * MiB + 4097)


@needs_qemu
def test_image_commands_and_a_volume_cloned_from_an_image(cloud, tmp_path):
    osc = cloud.member
    data = image_bytes()
    src = tmp_path / "disk.raw"
    src.write_bytes(data)
    name = unique("img")
    img = osc.json("image", "create", "--file", str(src), "--disk-format", "raw",
                   "--container-format", "bare", "--property", "os_distro=busybox", name)  # fmt: skip
    assert (img["name"], img["status"], img["size"]) == (name, "active", len(data)), img
    assert img["checksum"] == hashlib.md5(data).hexdigest()
    shown = osc.json("image", "show", img["id"])
    hashes = {k: shown.get(k, shown["properties"].get(k)) for k in ("os_hash_algo", "os_hash_value")}
    assert hashes == {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}
    assert shown["properties"]["os_distro"] == "busybox", shown
    assert img["id"] in {x["ID"] for x in osc.json("image", "list")}

    osc("image", "set", "--tag", "golden", "--property", "tier=1", "--min-disk", "1", img["id"])
    shown = osc.json("image", "show", img["id"])
    assert "golden" in shown["tags"] and shown["properties"]["tier"] == "1", shown
    assert shown["min_disk"] == 1

    out = tmp_path / "saved.raw"
    osc("image", "save", "--file", str(out), img["id"])
    assert out.read_bytes() == data

    # A volume from the image: an instant clone that reads the image's bytes, zeroes past
    # them, and is bootable.
    vol = osc.json("volume", "create", "--image", img["id"], "--size", "1", unique("boot"))
    vol = osc.json("volume", "show", vol["id"])
    assert (vol["status"], vol["size"], vol["bootable"]) == ("available", 1, True), vol
    assert vol["volume_image_metadata"]["image_id"] == img["id"], vol
    url = connect(cloud.cinder(), vol["id"])
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), url)

    # Writing the volume leaves the image alone; deleting the image leaves the volume's
    # copy of it alone.
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 8192 4096", url)
    osc("image", "save", "--file", str(out), img["id"])
    assert out.read_bytes() == data
    osc("image", "delete", img["id"])
    p = osc.run("image", "show", img["id"], check=False)
    assert p.returncode != 0
    back = tmp_path / "vol.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back))
    got = back.read_bytes()
    assert len(got) == GiB
    want = bytearray(data)
    want[8192:12288] = b"\x5a" * 4096
    assert got[: len(data)] == bytes(want)
    assert got[len(data) :].count(0) == GiB - len(data)
    expect(cloud.cinder()("DELETE", f"volumes/{vol['id']}"), 202)


def create(api: Api, status: int = 201, **body) -> dict:
    return expect(api("POST", "images", body), status).json()


def test_versions_schemas_and_creation_rules(cloud):
    r = expect(requests.get(f"{cloud.node.image_url}/", timeout=30), 300)
    assert r.json()["versions"][0]["status"] == "CURRENT"
    g = cloud.glance()
    expect(Api(g.base, None)("GET", "images"), 401)
    schema = expect(g("GET", "schemas/image"), 200).json()
    assert schema["additionalProperties"] == {"type": "string"}
    assert "raw" in schema["properties"]["disk_format"]["enum"]
    expect(g("GET", "schemas/members"), 200)

    img = create(g, name="a", disk_format="raw", container_format="bare", tags=["x", "x", "y"])
    assert (img["status"], img["visibility"], img["tags"]) == ("queued", "shared", ["x", "y"])
    assert img["size"] is None and img["checksum"] is None and img["protected"] is False
    assert img["file"] == f"/v2/images/{img['id']}/file" and img["owner"] == cloud.project_id
    # Read-only and reserved attributes, bad formats, bad ids, duplicate ids.
    for bad, code in [({"status": "active"}, 403), ({"size": 3}, 403), ({"deleted": True}, 403),
                      ({"disk_format": "floppy"}, 400), ({"min_ram": -1}, 400),
                      ({"id": "not-a-uuid"}, 400), ({"id": img["id"]}, 409),
                      ({"visibility": "public"}, 403), ({"extra": 5}, 400)]:  # fmt: skip
        expect(g("POST", "images", bad), code)
    expect(cloud.glance("reader")("POST", "images", {"name": "r"}), 403)
    assert create(cloud.glance("admin"), visibility="public", name="pub")["visibility"] == "public"

    # Data: formats are needed first, a queued image has no data, a second upload is a 409.
    bare = create(g, name="noformats")
    expect(g.upload(bare["id"], b"abc"), 400)
    expect(g("GET", f"images/{img['id']}/file"), 204)
    expect(g("PUT", f"images/{img['id']}/file", data=b"abc", Content_Type="text/plain"), 415)
    expect(g.upload(img["id"], b"hello, world"), 204)
    expect(g.upload(img["id"], b"again"), 409)
    shown = expect(g("GET", f"images/{img['id']}"), 200).json()
    assert (shown["status"], shown["size"]) == ("active", 12)
    assert shown["checksum"] == hashlib.md5(b"hello, world").hexdigest()
    r = expect(g("GET", f"images/{img['id']}/file", Range="bytes=7-"), 206)
    assert r.content == b"world" and r.headers["Content-Range"] == "bytes 7-11/12"
    expect(g("GET", f"images/{img['id']}/file", Range="bytes=12-"), 416)
    r = expect(g("GET", f"images/{img['id']}/file"), 200)
    assert r.content == b"hello, world" and r.headers["Content-MD5"] == shown["checksum"]
    # Formats are fixed once data is there.
    expect(g.patch(img["id"], [{"op": "replace", "path": "/disk_format", "value": "qcow2"}]), 403)

    # An image of zero bytes is active and downloads empty.
    empty = create(g, name="empty", disk_format="raw", container_format="bare")
    expect(g.upload(empty["id"], b""), 204)
    r = expect(g("GET", f"images/{empty['id']}/file"), 200)
    assert r.content == b""


def test_patch_tags_listing_and_delete(cloud):
    g = cloud.glance()
    img = create(g, name="p", disk_format="raw", container_format="bare")
    iid = img["id"]
    expect(g("PATCH", f"images/{iid}", [{"op": "add", "path": "/a", "value": "1"}]), 415)
    out = expect(g.patch(iid, [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
        {"op": "add", "path": "/min_ram", "value": 512},
        {"op": "replace", "path": "/tags", "value": ["t1"]},
    ]), 200).json()  # fmt: skip
    assert (out["name"], out["hw_disk_bus"], out["min_ram"], out["tags"]) == (
        "renamed", "virtio", 512, ["t1"])  # fmt: skip
    expect(g.patch(iid, [{"op": "replace", "path": "/nothere", "value": "x"}]), 409)
    expect(g.patch(iid, [{"op": "remove", "path": "/nothere"}]), 409)
    expect(g.patch(iid, [{"op": "remove", "path": "/name"}]), 403)
    expect(g.patch(iid, [{"op": "replace", "path": "/status", "value": "active"}]), 403)
    expect(g.patch(iid, [{"op": "move", "path": "/name"}]), 400)
    expect(g.patch(iid, [{"op": "remove", "path": "/hw_disk_bus"}]), 200)
    # A failed patch changes nothing, even the operations before the bad one.
    expect(g.patch(iid, [{"op": "replace", "path": "/name", "value": "z"},
                         {"op": "add", "path": "/size", "value": 1}]), 403)  # fmt: skip
    assert expect(g("GET", f"images/{iid}"), 200).json()["name"] == "renamed"

    expect(g("PUT", f"images/{iid}/tags/t2"), 204)
    expect(g("PUT", f"images/{iid}/tags/t2"), 204)
    expect(g("DELETE", f"images/{iid}/tags/t1"), 204)
    expect(g("DELETE", f"images/{iid}/tags/t1"), 404)
    assert expect(g("GET", f"images/{iid}"), 200).json()["tags"] == ["t2"]

    # Listing: filters, sorting and pages linked by `next`.
    names = [f"l-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    for n in names:
        create(g, name=n, tags=["page"])
    seen, url = [], "images?tag=page&limit=2&sort=name:asc"
    while url:
        body = expect(g("GET", url.removeprefix("/v2/")), 200).json()
        assert len(body["images"]) <= 2
        seen += [i["name"] for i in body["images"]]
        url = body.get("next")
    assert seen == sorted(names)
    assert [i["id"] for i in expect(g("GET", "images?name=renamed"), 200).json()["images"]] == [iid]
    expect(g("GET", "images?marker=nope"), 400)
    expect(g("GET", "images?sort_key=bogus"), 400)

    # Protected images cannot be deleted; others' images cannot be changed or seen.
    expect(g.patch(iid, [{"op": "replace", "path": "/protected", "value": True}]), 200)
    expect(g("DELETE", f"images/{iid}"), 403)
    expect(g.patch(iid, [{"op": "replace", "path": "/protected", "value": False}]), 200)
    expect(cloud.glance("other")("GET", f"images/{iid}"), 404)
    expect(cloud.glance("other")("DELETE", f"images/{iid}"), 404)
    expect(g("DELETE", f"images/{iid}"), 204)
    expect(g("GET", f"images/{iid}"), 404)


def test_sharing_deactivation_and_volumes_from_images(cloud):
    g, o, admin = cloud.glance(), cloud.glance("other"), cloud.glance("admin")
    img = create(g, name="shared", disk_format="raw", container_format="bare",
                 visibility="private")  # fmt: skip
    iid = img["id"]
    expect(g.upload(iid, b"\x01" * 8192), 204)
    expect(o("GET", f"images/{iid}"), 404)
    # Only shared images have members.
    expect(g("POST", f"images/{iid}/members", {"member": cloud.other_project_id}), 403)
    expect(g.patch(iid, [{"op": "replace", "path": "/visibility", "value": "shared"}]), 200)
    m = expect(g("POST", f"images/{iid}/members", {"member": cloud.other_project_id}), 200).json()
    assert (m["status"], m["member_id"]) == ("pending", cloud.other_project_id)
    expect(g("POST", f"images/{iid}/members", {"member": cloud.other_project_id}), 409)
    # The member sees it, but lists it only once accepted; the owner cannot accept for it.
    expect(o("GET", f"images/{iid}"), 200)
    listed = lambda api, q="": {i["id"] for i in expect(api("GET", f"images{q}"), 200).json()["images"]}  # noqa: E731
    assert iid not in listed(o)
    assert iid in listed(o, "?member_status=pending")
    mpath = f"images/{iid}/members/{cloud.other_project_id}"
    expect(g("PUT", mpath, {"status": "accepted"}), 403)
    expect(o("PUT", mpath, {"status": "maybe"}), 400)
    assert expect(o("PUT", mpath, {"status": "accepted"}), 200).json()["status"] == "accepted"
    assert iid in listed(o)
    assert [x["member_id"] for x in expect(g("GET", f"images/{iid}/members"), 200).json()["members"]] == [cloud.other_project_id]  # fmt: skip
    expect(o("DELETE", mpath), 403)

    # The member makes a volume from it in its own project.
    v = expect(cloud.cinder("other")("POST", "volumes",
                                      {"volume": {"imageRef": iid, "name": "fromshared"}}), 202)  # fmt: skip
    assert v.json()["volume"]["size"] == 1 and v.json()["volume"]["bootable"] == "true"

    # Deactivated: only admins download; volumes cannot be made from it.
    expect(g("POST", f"images/{iid}/actions/deactivate"), 403)
    expect(admin("POST", f"images/{iid}/actions/deactivate"), 204)
    expect(g("GET", f"images/{iid}/file"), 403)
    assert expect(admin("GET", f"images/{iid}/file"), 200).content == b"\x01" * 8192
    expect(cloud.cinder()("POST", "volumes", {"volume": {"imageRef": iid, "size": 1}}), 400)
    expect(admin("POST", f"images/{iid}/actions/reactivate"), 204)
    assert expect(g("GET", f"images/{iid}/file"), 200).content == b"\x01" * 8192

    # Removing the member hides the image from it again.
    expect(g("DELETE", mpath), 204)
    expect(o("GET", f"images/{iid}"), 404)
    expect(cloud.cinder("other")("POST", "volumes", {"volume": {"imageRef": iid, "size": 1}}), 404)

    # Volumes need a format they can be made from, enough size, and one source.
    p = create(g, name="p", disk_format="ploop", container_format="bare")
    expect(g.upload(p["id"], b"\x03" * 4096), 204)
    expect(cloud.cinder()("POST", "volumes", {"volume": {"imageRef": p["id"], "size": 1}}), 400)
    big = create(g, name="big", disk_format="raw", container_format="bare", min_disk=2)
    expect(g.upload(big["id"], b"\x02" * 4096), 204)
    expect(cloud.cinder()("POST", "volumes", {"volume": {"imageRef": big["id"], "size": 1}}), 400)
    v = expect(cloud.cinder()("POST", "volumes", {"volume": {"imageRef": big["id"]}}), 202)
    assert v.json()["volume"]["size"] == 2
    expect(cloud.cinder()("POST", "volumes",
                          {"volume": {"imageRef": big["id"], "source_volid": v.json()["volume"]["id"]}}), 400)  # fmt: skip
    expect(cloud.cinder()("POST", "volumes", {"volume": {"imageRef": str(uuid.uuid4()), "size": 1}}), 404)  # fmt: skip


def wait_volume(api: Api, vid: str, *wanted: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        v = expect(api("GET", f"volumes/{vid}"), 200).json()["volume"]
        if v["status"] in wanted:
            return v
        assert time.monotonic() < deadline, f"volume {vid} stuck in {v['status']}"
        time.sleep(0.3)


@needs_qemu
def test_volumes_from_qcow2_images_are_converted(cloud, tmp_path):
    g, c = cloud.glance(), cloud.cinder()
    # A 96 MiB disk with data at both ends, shipped as qcow2 as cloud images are.
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(96 * MiB)
        f.write(os.urandom(3 * MiB + 17))
        f.seek(90 * MiB + 5)
        f.write(os.urandom(MiB))
    qcow = tmp_path / "disk.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow))
    img = create(g, name="cloud", disk_format="qcow2", container_format="bare")
    expect(g.upload(img["id"], qcow.read_bytes()), 204)
    v = expect(c("POST", "volumes", {"volume": {"imageRef": img["id"], "size": 1}}), 202)
    vid = v.json()["volume"]["id"]
    assert v.json()["volume"]["status"] in ("downloading", "available")
    done = wait_volume(c, vid, "available", "error")
    assert done["status"] == "available" and done["bootable"] == "true", done
    assert done["volume_image_metadata"]["disk_format"] == "qcow2"
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(raw), connect(c, vid))

    # Bytes that are not the qcow2 they claim to be leave the volume in error, and
    # leave nothing behind.
    fake = create(g, name="fake", disk_format="qcow2", container_format="bare")
    expect(g.upload(fake["id"], b"QFI\xfb" + bytes(100)), 204)
    v = expect(c("POST", "volumes", {"volume": {"imageRef": fake["id"], "size": 1}}), 202)
    assert wait_volume(c, v.json()["volume"]["id"], "available", "error")["status"] == "error"
    expect(c("DELETE", f"volumes/{v.json()['volume']['id']}"), 202)
    scratch = cloud.node.data_dir / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())
