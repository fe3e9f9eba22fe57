"""The Block Storage API on one node: the real `openstack volume ...` commands, raw Cinder
v2/v3 and Nova os-volumes calls for what the CLI does not reach, and the data behind them
read and written over NBD with qemu-io and qemu-img."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest
import requests

from harness import ADMIN_PROJECT, ADMIN_USER, MiB, Node
from osc import Cred, Osc, expect, keystone_token, openstack_cli, unique  # noqa: F401 (a fixture)

GiB = 1 << 30

needs_qemu = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "qemu-io")),
    reason="qemu-img and qemu-io are needed (scripts/setup.sh installs them)",
)


@dataclass
class Cloud:
    node: Node
    admin: Osc  # the bootstrap admin, on the admin project
    member: Osc  # a member of project P
    project_id: str  # P
    tokens: dict[str, str]  # "member", "reader", "other", "admin" -> token

    def api(self, who: str = "member", version: str = "v3") -> "Api":
        project = self.project_id
        return Api(f"{self.node.cinder_url}/{version}/{project}", self.tokens.get(who))


class Api:
    """Raw JSON calls to one Cinder endpoint as one token (or none)."""

    def __init__(self, base: str, token: str | None):
        self.base, self.token = base, token

    def __call__(self, method: str, path: str, body=None, **headers) -> requests.Response:
        h = {"X-Auth-Token": self.token} if self.token else {}
        h.update(headers)
        return requests.request(method, f"{self.base}/{path}", json=body, headers=h, timeout=60)


@pytest.fixture(scope="module")
def cloud(single_node, openstack_cli, tmp_path_factory) -> Cloud:
    cwd = tmp_path_factory.mktemp("osc")
    admin = Osc(
        openstack_cli, single_node, Cred(ADMIN_USER, single_node.password, ADMIN_PROJECT), cwd
    )
    p_name, other_name = unique("vols"), unique("elsewhere")
    project = admin.json("project", "create", p_name)
    admin("project", "create", other_name)
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
    return Cloud(single_node, admin, member, project["id"], tokens)


def wait_status(api: Api, kind: str, id_: str, *wanted: str, timeout: float = 120) -> dict:
    """Poll `kind/id` until its status is one of `wanted` (as clients and Tempest do)."""
    key = {"volumes": "volume", "snapshots": "snapshot", "backups": "backup"}[kind]
    deadline = time.monotonic() + timeout
    while True:
        rec = expect(api("GET", f"{kind}/{id_}"), 200).json()[key]
        if rec["status"] in wanted:
            return rec
        assert not rec["status"].startswith("error"), rec
        assert time.monotonic() < deadline, f"{kind} {id_} stuck in {rec['status']}"
        time.sleep(0.3)


def run(*cmd: str, timeout: float = 300) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def connect(api: Api, volume_id: str) -> str:
    """`os-initialize_connection`, as Nova does before it attaches: the NBD URL it names."""
    r = expect(api("POST", f"volumes/{volume_id}/action",
                   {"os-initialize_connection": {"connector": {"host": "test"}}}), 200)  # fmt: skip
    info = r.json()["connection_info"]
    assert info["driver_volume_type"] == "nbd", info
    d = info["data"]
    assert d["export_name"] == volume_id
    return f"nbd://{d['host']}:{d['port']}/{d['export_name']}"


def qemu_io(url: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw", url]
    for c in commands:
        args += ["-c", c]
    out = run(*args)
    assert "Pattern verification failed" not in out and "error" not in out.lower(), out
    return out


# --------------------------------------------------------------------------------------------
# The openstack CLI
# --------------------------------------------------------------------------------------------


def test_volume_commands(cloud):
    osc = cloud.member
    name = unique("vol")
    v = osc.json("volume", "create", "--size", "1", "--description", "first", name)
    assert (v["name"], v["size"], v["status"], v["type"]) == (name, 1, "available", "__DEFAULT__")
    listed = osc.json("volume", "list")
    assert [x["Status"] for x in listed if x["ID"] == v["id"]] == ["available"], listed

    osc("volume", "set", "--name", f"{name}-2", "--property", "tier=gold",
        "--description", "second", v["id"])  # fmt: skip
    shown = osc.json("volume", "show", v["id"])
    assert shown["name"] == f"{name}-2" and shown["description"] == "second"
    assert shown["properties"] == {"tier": "gold"}
    osc("volume", "unset", "--property", "tier", v["id"])
    assert osc.json("volume", "show", v["id"])["properties"] == {}

    # The admin sees it with all projects; the other project does not see it at all.
    everyone = cloud.admin.json("volume", "list", "--all-projects")
    assert v["id"] in {x["ID"] for x in everyone}
    expect(cloud.api("other")("GET", f"volumes/{v['id']}"), 403)

    osc("volume", "delete", v["id"])
    p = osc.run("volume", "show", v["id"], check=False)
    assert p.returncode != 0 and "No Volume found" in p.stderr, p.stderr


def test_snapshot_and_backup_commands(cloud):
    osc = cloud.member
    v = osc.json("volume", "create", "--size", "1", unique("src"))
    snap = osc.json("volume", "snapshot", "create", "--volume", v["id"], unique("snap"))
    assert snap["status"] == "available" and snap["volume_id"] == v["id"]
    assert snap["id"] in {s["ID"] for s in osc.json("volume", "snapshot", "list")}

    # A volume with snapshots cannot go: Cinder's 400.
    p = osc.run("volume", "delete", v["id"], check=False)
    assert p.returncode != 0 and "dependent snapshots" in p.stderr, p.stderr

    clone = osc.json("volume", "create", "--snapshot", snap["id"], "--size", "2", unique("c"))
    assert clone["snapshot_id"] == snap["id"] and clone["size"] == 2

    backup = osc.json("volume", "backup", "create", "--name", unique("bk"), v["id"])
    b = wait_status(cloud.api(), "backups", backup["id"], "available")
    assert b["volume_id"] == v["id"] and b["container"] == "volumebackups"
    assert backup["id"] in {x["ID"] for x in osc.json("volume", "backup", "list")}
    wait_status(cloud.api(), "volumes", v["id"], "available")

    # Restore into the same volume (--force: it exists) and into a new one.
    osc("volume", "backup", "restore", "--force", backup["id"], v["id"])
    wait_status(cloud.api(), "volumes", v["id"], "available")
    restored = unique("restored")
    out = osc.json("volume", "backup", "restore", backup["id"], restored)
    new = wait_status(cloud.api(), "volumes", out["volume_id"], "available")
    assert new["name"] == restored and new["size"] == 1

    wait_status(cloud.api(), "backups", backup["id"], "available")
    osc("volume", "backup", "delete", backup["id"])
    osc("volume", "snapshot", "delete", snap["id"])
    osc("volume", "delete", v["id"], clone["id"], out["volume_id"])


# --------------------------------------------------------------------------------------------
# Data over NBD
# --------------------------------------------------------------------------------------------


@needs_qemu
def test_snapshot_keeps_old_data_and_clones_read_it(cloud):
    api = cloud.api()
    v = expect(api("POST", "volumes", {"volume": {"size": 1, "name": unique("a")}}), 202)
    vid = v.json()["volume"]["id"]
    url = connect(api, vid)
    spots = [(0, 4096), (5 * MiB - 3, 70001), (700 * MiB + 11, MiB)]
    for off, n in spots:
        qemu_io(url, f"write -P 0xaa {off} {n}")
    snap = expect(api("POST", "snapshots", {"snapshot": {"volume_id": vid, "name": "A"}}), 202)
    sid = snap.json()["snapshot"]["id"]
    for off, n in spots[1:]:
        qemu_io(url, f"write -P 0xbb {off} {n}")
    qemu_io(url, f"write -z {GiB - MiB} {MiB}")

    c = expect(api("POST", "volumes", {"volume": {"snapshot_id": sid, "name": unique("c")}}), 202)
    cid = c.json()["volume"]["id"]
    assert c.json()["volume"]["size"] == 1
    curl = connect(api, cid)
    for off, n in spots:
        qemu_io(curl, f"read -P 0xaa {off} {n}")
    qemu_io(url, f"read -P 0xaa {spots[0][0]} {spots[0][1]}")
    for off, n in spots[1:]:
        qemu_io(url, f"read -P 0xbb {off} {n}")
    # Writing the clone changes neither the snapshot nor the original.
    qemu_io(curl, f"write -P 0xcc {spots[0][0]} {spots[0][1]}")
    qemu_io(url, f"read -P 0xaa {spots[0][0]} {spots[0][1]}")
    # A clone of the volume itself (source_volid) is instant too and sees B.
    s = expect(api("POST", "volumes", {"volume": {"source_volid": vid, "name": unique("s")}}), 202)
    surl = connect(api, s.json()["volume"]["id"])
    qemu_io(surl, f"read -P 0xbb {spots[1][0]} {spots[1][1]}")

    # The snapshot goes; the clone still reads A, through the layers it shares.
    expect(api("DELETE", f"snapshots/{sid}"), 202)
    qemu_io(curl, f"read -P 0xaa {spots[1][0]} {spots[1][1]}")


@needs_qemu
def test_backup_restore_is_byte_exact_and_incremental(cloud, tmp_path):
    api = cloud.api()
    vid = expect(api("POST", "volumes", {"volume": {"size": 1}}), 202).json()["volume"]["id"]
    url = connect(api, vid)
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(24 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url)
    qemu_io(url, f"write -P 0x77 {900 * MiB + 5} 1000")

    full = expect(api("POST", "backups", {"backup": {"volume_id": vid}}), 202).json()["backup"]
    full = wait_status(api, "backups", full["id"], "available")
    assert full["object_count"] == 6 + 1 + 1  # 6 data extents, the one at 900 MiB, a manifest
    qemu_io(url, f"write -P 0x78 {4 * MiB + 100} 10")  # one extent changes
    incr = expect(api("POST", "backups", {"backup": {"volume_id": vid, "incremental": True}}), 202)
    incr = wait_status(api, "backups", incr.json()["backup"]["id"], "available")
    assert incr["is_incremental"] is True and incr["object_count"] == 2, incr

    # The full backup has a dependent now.
    expect(api("DELETE", f"backups/{full['id']}"), 400)

    r = expect(api("POST", f"backups/{incr['id']}/restore", {"restore": {"name": "back"}}), 202)
    new = wait_status(api, "volumes", r.json()["restore"]["volume_id"], "available")
    nurl = connect(api, new["id"])
    back = tmp_path / "back.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", nurl, str(back))
    assert back.stat().st_size == GiB
    want = bytearray(src.read_bytes())
    want[4 * MiB + 100 : 4 * MiB + 110] = b"\x78" * 10
    with open(back, "rb") as f:
        assert f.read(24 * MiB) == bytes(want), "restored data differs in the first 24 MiB"
    qemu_io(nurl, f"read -P 0 {24 * MiB} {900 * MiB + 5 - 24 * MiB}",
            f"read -P 0x77 {900 * MiB + 5} 1000", f"read -P 0 {900 * MiB + 1005} {MiB}")  # fmt: skip


# --------------------------------------------------------------------------------------------
# The status machine, faults and access
# --------------------------------------------------------------------------------------------


def test_status_machine_and_faults(cloud):
    api = cloud.api()
    vid = expect(api("POST", "volumes", {"volume": {"size": 1}}), 202).json()["volume"]["id"]

    def act(body, *codes, token="member"):
        return expect(cloud.api(token)("POST", f"volumes/{vid}/action", body), *codes)

    act({"os-unreserve": {}}, 400)  # not attaching
    act({"os-reserve": {}}, 202)
    act({"os-reserve": {}}, 400)  # already attaching
    assert wait_status(api, "volumes", vid, "attaching")
    act({"os-attach": {"instance_uuid": str(uuid.uuid4()), "mountpoint": "/dev/vdb"}}, 202)
    v = wait_status(api, "volumes", vid, "in-use")
    assert v["attachments"][0]["device"] == "/dev/vdb"
    expect(api("DELETE", f"volumes/{vid}"), 400)  # in use
    act({"os-extend": {"new_size": 2}}, 400)  # 3.0 extends only available volumes
    act({"os-begin_detaching": {}}, 202)
    act({"os-roll_detaching": {}}, 202)
    act({"os-detach": {}}, 202)
    wait_status(api, "volumes", vid, "available")
    act({"os-extend": {"new_size": 1}}, 400)  # not larger
    act({"os-extend": {"new_size": 3}}, 202)
    assert wait_status(api, "volumes", vid, "available")["size"] == 3

    act({"os-reset_status": {"status": "error"}}, 403)  # admins only
    act({"os-reset_status": {"status": "error"}}, 202, token="admin")
    act({"os-reset_status": {"status": "bogus"}}, 400, token="admin")
    act({"os-no-such-thing": {}}, 400)
    act({"os-reserve": {}}, 400)  # from error
    act({"os-reset_status": {"status": "available"}}, 202, token="admin")

    # Malformed bodies, versions, tokens.
    r = requests.post(f"{api.base}/volumes", data=b"{not json",
                      headers={"X-Auth-Token": api.token, "Content-Type": "application/json"},
                      timeout=30)  # fmt: skip
    assert r.status_code == 400 and "badRequest" in r.json(), r.text
    expect(api("POST", "volumes", {"volume": {"size": -1}}), 400)
    expect(api("POST", "volumes", {"volume": {"size": "x"}}), 400)
    expect(api("POST", "volumes", {"nothing": {}}), 400)
    expect(api("GET", f"volumes/{uuid.uuid4()}"), 404)
    expect(api("GET", "volumes", **{"OpenStack-API-Version": "volume 3.70"}), 406)
    ok = expect(api("GET", "volumes", **{"OpenStack-API-Version": "volume 3.0"}), 200)
    assert ok.headers["OpenStack-API-Version"] == "volume 3.0"
    expect(cloud.api(None)("GET", "volumes"), 401)
    expect(cloud.api("reader")("GET", f"volumes/{vid}"), 200)
    expect(cloud.api("reader")("POST", "volumes", {"volume": {"size": 1}}), 403)
    expect(cloud.api("other")("GET", "volumes"), 403)  # another project's URL

    versions = requests.get(f"{cloud.node.cinder_url}/", timeout=30)
    assert versions.status_code == 300
    ids = {v["id"]: v for v in versions.json()["versions"]}
    assert ids["v3.0"]["version"] == "3.0" and ids["v3.0"]["min_version"] == "3.0"

    # The same volume through v2.
    v2 = expect(cloud.api("member", "v2")("GET", f"volumes/{vid}"), 200).json()["volume"]
    assert v2["id"] == vid and v2["size"] == 3
    expect(api("DELETE", f"volumes/{vid}"), 202)


def test_types_quotas_and_limits(cloud):
    admin = Api(f"{cloud.node.cinder_url}/v3/{cloud.project_id}", cloud.tokens["admin"])
    api = cloud.api()
    name = unique("type")
    t = expect(admin("POST", "types", {"volume_type": {"name": name,
                                                        "extra_specs": {"tier": "fast"}}}), 200)  # fmt: skip
    tid = t.json()["volume_type"]["id"]
    expect(api("POST", "types", {"volume_type": {"name": unique("t")}}), 403)
    expect(admin("POST", f"types/{tid}/extra_specs", {"extra_specs": {"x": "1"}}), 200)
    specs = expect(api("GET", f"types/{tid}/extra_specs"), 200).json()["extra_specs"]
    assert specs == {"tier": "fast", "x": "1"}
    names = {x["name"] for x in expect(api("GET", "types"), 200).json()["volume_types"]}
    assert {"__DEFAULT__", name} <= names
    v = expect(api("POST", "volumes", {"volume": {"size": 1, "volume_type": name}}), 202)
    vid = v.json()["volume"]["id"]
    assert v.json()["volume"]["volume_type"] == name
    expect(admin("DELETE", f"types/{tid}"), 400)  # in use

    limits = expect(api("GET", "limits"), 200).json()["limits"]["absolute"]
    used = limits["totalVolumesUsed"]
    expect(admin("PUT", f"os-quota-sets/{cloud.project_id}",
                 {"quota_set": {"volumes": used}}), 200)  # fmt: skip
    over = expect(api("POST", "volumes", {"volume": {"size": 1}}), 413)
    assert "overLimit" in over.json(), over.text
    q = expect(api("GET", f"os-quota-sets/{cloud.project_id}?usage=true"), 200).json()
    assert q["quota_set"]["volumes"] == {"limit": used, "in_use": used, "reserved": 0,
                                         "allocated": 0}  # fmt: skip
    expect(api("PUT", f"os-quota-sets/{cloud.project_id}", {"quota_set": {"volumes": 99}}), 403)
    expect(admin("DELETE", f"os-quota-sets/{cloud.project_id}"), 202)
    expect(api("DELETE", f"volumes/{vid}"), 202)
    expect(admin("DELETE", f"types/{tid}"), 202)


def test_nova_os_volumes_share_the_records(cloud):
    base = f"{cloud.node.compute_url}/v2.1/{cloud.project_id}"
    h = {"X-Auth-Token": cloud.tokens["member"]}
    r = requests.post(f"{base}/os-volumes", headers=h, timeout=30,
                      json={"volume": {"size": 1, "display_name": "from-nova"}})  # fmt: skip
    assert r.status_code == 200, r.text
    vol = r.json()["volume"]
    assert vol["displayName"] == "from-nova" and vol["size"] == 1 and vol["status"] == "available"
    # Cinder sees it under the same id.
    expect(cloud.api()("GET", f"volumes/{vol['id']}"), 200)
    listed = requests.get(f"{base}/os-volumes/detail", headers=h, timeout=30).json()["volumes"]
    assert vol["id"] in {v["id"] for v in listed}
    r = requests.post(f"{base}/os-snapshots", headers=h, timeout=30,
                      json={"snapshot": {"volume_id": vol["id"], "display_name": "ns"}})  # fmt: skip
    assert r.status_code == 200, r.text
    snap = r.json()["snapshot"]
    assert snap["volumeId"] == vol["id"] and snap["displayName"] == "ns"
    shown = requests.get(f"{base}/os-snapshots/{snap['id']}", headers=h, timeout=30)
    assert shown.json()["snapshot"]["status"] == "available"
    types = requests.get(f"{base}/os-volume-types", headers=h, timeout=30).json()
    assert "__DEFAULT__" in {t["name"] for t in types["volume_types"]}
    missing = requests.get(f"{base}/os-volumes/{uuid.uuid4()}", headers=h, timeout=30)
    assert missing.status_code == 404 and "itemNotFound" in missing.json()
    assert requests.delete(f"{base}/os-snapshots/{snap['id']}", headers=h, timeout=30).status_code == 202
    assert requests.delete(f"{base}/os-volumes/{vol['id']}", headers=h, timeout=30).status_code == 202
    assert requests.get(f"{base}/os-volumes/{vol['id']}", headers=h, timeout=30).status_code == 404


def test_connection_info_names_the_nbd_export_or_the_vhost_socket(cloud):
    api = cloud.api()
    vid = expect(api("POST", "volumes", {"volume": {"size": 1}}), 202).json()["volume"]["id"]
    path = cloud.node.data_dir / "vhost-user" / f"{vid}.sock"
    assert not path.exists()  # not exported before a connection is initialized
    r = expect(api("POST", f"volumes/{vid}/action", {"os-initialize_connection": {
        "connector": {"host": "h", "vhost_user": True}}}), 200).json()["connection_info"]  # fmt: skip
    assert r["driver_volume_type"] == "vhost_user" and r["data"]["socket_path"] == str(path)
    deadline = time.monotonic() + 10
    while not path.is_socket():
        assert time.monotonic() < deadline, f"no socket at {path}"
        time.sleep(0.1)
    url = connect(api, vid)  # the NBD form of the same connection
    listed = run("nbdinfo", "--list", "--json", url.rsplit("/", 1)[0]) if shutil.which("nbdinfo") else ""
    assert not listed or vid in listed
    expect(api("POST", f"volumes/{vid}/action", {"os-terminate_connection": {"connector": {}}}), 202)
    deadline = time.monotonic() + 10
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still there after terminate_connection"
        time.sleep(0.1)
    expect(api("DELETE", f"volumes/{vid}"), 202)


def test_snapshot_metadata_and_admin_actions(cloud):
    api = cloud.api()
    admin = Api(f"{cloud.node.cinder_url}/v3/{cloud.project_id}", cloud.tokens["admin"])
    vid = expect(api("POST", "volumes", {"volume": {"size": 1}}), 202).json()["volume"]["id"]
    sid = expect(api("POST", "snapshots", {"snapshot": {"volume_id": vid}}), 202).json()[
        "snapshot"
    ]["id"]
    expect(api("POST", f"snapshots/{sid}/metadata", {"metadata": {"a": "1", "b": "2"}}), 200)
    expect(api("DELETE", f"snapshots/{sid}/metadata/a"), 200)
    assert expect(api("GET", f"snapshots/{sid}/metadata"), 200).json()["metadata"] == {"b": "2"}
    r = expect(api("PUT", f"snapshots/{sid}", {"snapshot": {"name": "renamed"}}), 200)
    assert r.json()["snapshot"]["name"] == "renamed"
    # A snapshot in use by nothing but set to error by an admin can still be deleted;
    # one stuck in `deleting` needs os-force_delete.
    expect(api("POST", f"snapshots/{sid}/action", {"os-reset_status": {"status": "error"}}), 403)
    expect(admin("POST", f"snapshots/{sid}/action",
                 {"os-reset_status": {"status": "deleting"}}), 202)  # fmt: skip
    assert wait_status(api, "snapshots", sid, "deleting")
    expect(api("DELETE", f"snapshots/{sid}"), 400)
    expect(admin("POST", f"snapshots/{sid}/action", {"os-force_delete": {}}), 202)
    expect(api("GET", f"snapshots/{sid}"), 404)
    # A snapshot of an in-use volume needs force.
    expect(api("POST", f"volumes/{vid}/action", {"os-reserve": {}}), 202)
    expect(api("POST", f"volumes/{vid}/action",
               {"os-attach": {"instance_uuid": str(uuid.uuid4()), "mountpoint": "/dev/vdc"}}),
           202)  # fmt: skip
    expect(api("POST", "snapshots", {"snapshot": {"volume_id": vid}}), 400)
    forced = expect(api("POST", "snapshots", {"snapshot": {"volume_id": vid, "force": True}}), 202)
    expect(api("DELETE", f"snapshots/{forced.json()['snapshot']['id']}"), 202)
    expect(api("POST", f"volumes/{vid}/action", {"os-detach": {}}), 202)
    expect(api("DELETE", f"volumes/{vid}"), 202)
