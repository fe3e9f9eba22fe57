"""Swift features beyond the core verbs, on one node, through plain HTTP: account and
container quotas (413 past a quota, 403 for a non-reseller setting an account quota),
bulk delete (text and JSON answers, objects before containers), and SLO segments deleted
with their manifest."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from harness import Node
from test_swift_functional import KeystoneAdmin


def token_for(node: Node, user: str, password: str, project: str) -> tuple[str, str]:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"name": "Default"}, "password": password}
                },
            },
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
        }
    }
    r = requests.post(f"{node.keystone_url}/auth/tokens", json=body, timeout=10)
    r.raise_for_status()
    catalog = r.json()["token"]["catalog"]
    url = [e for e in catalog if e["type"] == "object-store"][0]["endpoints"][0]["url"]
    return r.headers["X-Subject-Token"], url


@pytest.fixture(scope="module")
def accounts(single_node):
    """A reseller admin and an ordinary member of a fresh project."""
    node = single_node
    node.wait_ready()
    ks = KeystoneAdmin(node)
    domain = ks.domain_id()
    suffix = uuid.uuid4().hex[:6]
    project = ks.project(f"quota-{suffix}", domain)
    ks.grant(project, ks.user(f"quser-{suffix}", "pw-quser", domain, project), ks.role("member"))
    admin_project = ks._call("GET", "/projects", params={"name": "admin"}).json()["projects"][0]
    admin_user = ks._call("GET", "/users", params={"name": "admin"}).json()["users"][0]
    ks.grant(admin_project["id"], admin_user["id"], ks.role("ResellerAdmin"))
    admin_token, _ = token_for(node, "admin", node.password, "admin")
    user_token, user_url = token_for(node, f"quser-{suffix}", "pw-quser", f"quota-{suffix}")
    return {"admin": admin_token, "user": user_token, "url": user_url}


def call(method, url, token, **kw):
    headers = kw.pop("headers", {})
    headers["X-Auth-Token"] = token
    return requests.request(method, url, headers=headers, timeout=30, **kw)


def test_container_quotas(accounts):
    url, tok = accounts["url"], accounts["user"]
    c = f"{url}/cq-{uuid.uuid4().hex[:6]}"
    assert call("PUT", c, tok, headers={"X-Container-Meta-Quota-Bytes": "abc"}).status_code == 400
    assert call("PUT", c, tok, headers={"X-Container-Meta-Quota-Bytes": "100"}).status_code == 201
    assert call("PUT", f"{c}/a", tok, data=b"x" * 60).status_code == 201
    r = call("PUT", f"{c}/b", tok, data=b"x" * 60)
    assert r.status_code == 413 and r.text == "Upload exceeds quota."
    # Copies count against the quota too.
    assert call("PUT", f"{c}/a2", tok, headers={"X-Copy-From": c.rsplit("/", 1)[1] + "/a"}).status_code == 413
    assert call("POST", c, tok, headers={"X-Container-Meta-Quota-Count": "x"}).status_code == 400
    assert call("POST", c, tok, headers={"X-Container-Meta-Quota-Bytes": "", "X-Container-Meta-Quota-Count": "1"}).status_code == 204
    assert call("PUT", f"{c}/b", tok, data=b"y").status_code == 413
    assert call("POST", c, tok, headers={"X-Remove-Container-Meta-Quota-Count": "x"}).status_code == 204
    assert call("PUT", f"{c}/b", tok, data=b"y").status_code == 201


def test_account_quotas(accounts):
    url, tok, admin = accounts["url"], accounts["user"], accounts["admin"]
    # Only a reseller admin sets an account quota.
    assert call("POST", url, tok, headers={"X-Account-Quota-Bytes": "10"}).status_code == 403
    assert call("POST", url, tok, headers={"X-Account-Meta-Quota-Bytes": "10"}).status_code == 403
    assert call("POST", url, admin, headers={"X-Account-Quota-Bytes": "ten"}).status_code == 400
    used = int(call("HEAD", url, tok).headers["X-Account-Bytes-Used"])
    assert call("POST", url, admin, headers={"X-Account-Quota-Bytes": str(used + 100)}).status_code == 204
    head = call("HEAD", url, tok).headers
    assert head["X-Account-Quota-Bytes"] == str(used + 100)
    assert not any(k.lower().startswith("x-account-meta-") for k in head), head
    c = f"{url}/aq-{uuid.uuid4().hex[:6]}"
    assert call("PUT", c, tok).status_code == 201
    assert call("PUT", f"{c}/small", tok, data=b"s" * 50).status_code == 201
    r = call("PUT", f"{c}/big", tok, data=b"b" * 51)
    assert r.status_code == 413, r.text
    # The reseller is not held to the quota; removing it lifts it for everyone.
    assert call("PUT", f"{c}/big", admin, data=b"b" * 51).status_code == 201
    assert call("POST", url, admin, headers={"X-Remove-Account-Quota-Bytes": "x"}).status_code == 204
    assert "X-Account-Quota-Bytes" not in call("HEAD", url, tok).headers
    assert call("PUT", f"{c}/big2", tok, data=b"b" * 51).status_code == 201


def test_bulk_delete(accounts):
    url, tok = accounts["url"], accounts["user"]
    name = f"bulk-{uuid.uuid4().hex[:6]}"
    c = f"{url}/{name}"
    assert call("PUT", c, tok).status_code == 201
    objs = ["one", "two", "dir/thrée", "with space"]
    for o in objs:
        assert call("PUT", f"{c}/{o}", tok, data=o.encode()).status_code == 201
    lines = [f"{name}/{requests.utils.quote(o)}" for o in objs] + [f"{name}/missing", name]
    r = call("POST", f"{url}?bulk-delete", tok, data="\n".join(lines),
             headers={"Content-Type": "text/plain", "Accept": "application/json"})
    assert r.status_code == 200
    result = json.loads(r.text)
    assert result["Response Status"] == "200 OK", result
    assert result["Number Deleted"] == 5, result
    assert result["Number Not Found"] == 1, result
    assert result["Errors"] == []
    assert call("HEAD", c, tok).status_code == 404
    # A container that is not empty fails with 409 and is reported; plain text answer.
    assert call("PUT", c, tok).status_code == 201
    assert call("PUT", f"{c}/keep", tok, data=b"k").status_code == 201
    r = call("DELETE", f"{url}?bulk-delete", tok, data=name, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    assert "Response Status: 400 Bad Request" in r.text, r.text
    assert f"{name}, 409 Conflict" in r.text, r.text
    # Without a token every delete is refused and reported; nothing goes.
    r = requests.post(f"{url}?bulk-delete", data=f"{name}/keep",
                      headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 200
    result = json.loads(r.text)
    assert result["Number Deleted"] == 0, result
    assert result["Errors"] == [[f"{name}/keep", "401 Unauthorized"]], result
    assert call("GET", c, tok).text == "keep\n"
    # The reseller admin may delete in any account.
    r = call("POST", f"{url}?bulk-delete", accounts["admin"], data=f"{name}/keep\n{name}",
             headers={"Accept": "application/json"})
    assert json.loads(r.text)["Number Deleted"] == 2


def test_slo_delete_removes_segments(accounts):
    url, tok = accounts["url"], accounts["user"]
    name = f"slo-{uuid.uuid4().hex[:6]}"
    c = f"{url}/{name}"
    assert call("PUT", c, tok).status_code == 201
    manifest = []
    for i in range(3):
        data = bytes([65 + i]) * (1000 + i)
        r = call("PUT", f"{c}/seg{i}", tok, data=data)
        manifest.append({"path": f"/{name}/seg{i}", "etag": r.headers["Etag"], "size_bytes": len(data)})
    r = call("PUT", f"{c}/big?multipart-manifest=put", tok, data=json.dumps(manifest))
    assert r.status_code == 201, r.text
    got = call("GET", f"{c}/big", tok)
    assert got.content == b"A" * 1000 + b"B" * 1001 + b"C" * 1002
    listing = call("GET", f"{c}?format=json", tok).json()
    big = [x for x in listing if x["name"] == "big"][0]
    assert big["bytes"] == 3003 and big["slo_etag"] == got.headers["Etag"]
    r = call("DELETE", f"{c}/big?multipart-manifest=delete", tok, headers={"Accept": "application/json"})
    assert json.loads(r.text)["Number Deleted"] == 4
    assert call("GET", c, tok).status_code == 204


def make_tar(files: dict[str, bytes], mode: str = "w", pax: dict[str, dict[str, str]] | None = None) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = (pax or {}).get(name, {})
            tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    return buf.getvalue()


def test_extract_archive(accounts):
    url, tok = accounts["url"], accounts["user"]
    c1, c2 = f"xa-{uuid.uuid4().hex[:6]}", f"xb-{uuid.uuid4().hex[:6]}"
    big = bytes(range(256)) * 4096  # 1 MiB: handed over in pieces
    files = {
        f"{c1}/a.txt": b"alpha",
        f"{c1}/dir/b.bin": big,
        f"./{c2}/ünï.txt": "ünï".encode(),
        "top-level-file": b"ignored",
    }
    pax = {f"{c1}/a.txt": {"SCHILY.xattr.user.meta.color": "blue",
                           "SCHILY.xattr.user.mime_type": "text/x-strata"}}
    r = call("PUT", f"{url}?extract-archive=tar.gz", tok, data=make_tar(files, "w:gz", pax),
             headers={"Accept": "application/json", "X-Object-Meta-Batch": "7"})
    assert r.status_code == 200
    result = json.loads(r.text)
    assert result["Response Status"] == "201 Created", result
    assert result["Number Files Created"] == 3, result
    assert result["Errors"] == []
    got = call("GET", f"{url}/{c1}/a.txt", tok)
    assert got.content == b"alpha"
    assert got.headers["X-Object-Meta-Color"] == "blue"
    assert got.headers["X-Object-Meta-Batch"] == "7"
    assert got.headers["Content-Type"] == "text/x-strata"
    assert call("GET", f"{url}/{c1}/dir/b.bin", tok).content == big
    assert call("GET", f"{url}/{c2}/ünï.txt", tok).content == "ünï".encode()
    # Into a named container and prefix, plain tar; bz2 too.
    r = call("PUT", f"{url}/{c1}/sub?extract-archive=tar", tok, data=make_tar({"x/y.txt": b"y"}),
             headers={"Accept": "application/json"})
    assert json.loads(r.text)["Number Files Created"] == 1
    assert call("GET", f"{url}/{c1}/sub/x/y.txt", tok).content == b"y"
    r = call("PUT", f"{url}/{c2}?extract-archive=tar.bz2", tok, data=make_tar({"z": b"z"}, "w:bz2"))
    assert "Number Files Created: 1" in r.text, r.text
    # Not an archive: the body says so.
    r = call("PUT", f"{url}?extract-archive=tar.gz", tok, data=b"not a tar at all" * 100,
             headers={"Accept": "application/json"})
    result = json.loads(r.text)
    assert result["Response Status"] == "400 Bad Request", result
    assert result["Response Body"].startswith("Invalid Tar File"), result
    # Another account's containers are out of reach: the first refusal stops it.
    other = accounts["url"].replace(accounts["url"].rsplit("/", 1)[1], "AUTH_nobody")
    r = call("PUT", f"{other}?extract-archive=tar", tok, data=make_tar({"c/o": b"o"}),
             headers={"Accept": "application/json"})
    assert json.loads(r.text)["Number Files Created"] == 0
