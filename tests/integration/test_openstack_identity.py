"""One node, managed with the real `openstack` command line (python-openstackclient):
identity administration through Keystone v3, then Swift's answers to the users it made,
role by role, as Swift's keystoneauth gives them (operator roles admin, member and
SwiftOperator own the account; reader only reads; any other role needs a container ACL).

Every CLI call gets its credentials on the command line; nothing OS_* comes from outside.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field

import pytest
import requests
from swiftclient.client import Connection

from harness import ADMIN_DOMAIN, ADMIN_PROJECT, ADMIN_USER
from osc import Cred, Osc, expect, openstack_cli, unique  # noqa: F401 (openstack_cli: a fixture)

HEX_ID = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_DOMAIN_ID = "default"


@dataclass
class World:
    """What the module's identity setup made, all through the CLI."""

    admin: Osc
    project: dict  # P, as `openstack project create` printed it
    other_project: dict
    users: dict[str, dict]  # role on P (or "other") -> `openstack user create` output
    creds: dict[str, Cred]
    role: dict  # `openstack role create anotherrole-...` output
    tokens: dict[str, str] = field(default_factory=dict)  # who -> `openstack token issue` id

    def osc(self, who: str) -> Osc:
        return Osc(self.admin.cli, self.admin.node, self.creds[who], self.admin.cwd)

    @property
    def account(self) -> str:
        return f"AUTH_{self.project['id']}"


@pytest.fixture(scope="module")
def world(single_node, openstack_cli, tmp_path_factory) -> World:
    cwd = tmp_path_factory.mktemp("osc")
    admin = Osc(
        openstack_cli, single_node, Cred(ADMIN_USER, single_node.password, ADMIN_PROJECT), cwd
    )
    p_name, p2_name = unique("proj"), unique("other")
    project = admin.json("project", "create", "--description", "tenant P", p_name)
    other = admin.json("project", "create", p2_name)
    role_name = unique("anotherrole")
    role = admin.json("role", "create", role_name)

    users, creds = {}, {}
    # Which role each user gets, and on which project.
    plan = {
        "member": ("member", p_name),
        "reader": ("reader", p_name),
        "operator": ("SwiftOperator", p_name),
        "another": (role_name, p_name),
        "other": ("member", p2_name),
    }
    for who, (role_to_grant, proj) in plan.items():
        name, password = unique(f"u-{who}"), "pw-" + uuid.uuid4().hex
        users[who] = admin.json(
            "user", "create", "--project", proj, "--password", password,
            "--description", f"{who} user", name,
        )  # fmt: skip
        if role_to_grant == "SwiftOperator":
            # Not there by default: operators create it, as Swift deployments do.
            admin("role", "create", "--or-show", role_to_grant)
        out = admin("role", "add", "--project", proj, "--user", name, role_to_grant)
        assert out.strip() == "", out  # `role add` prints nothing on success
        creds[who] = Cred(name, password, proj)

    w = World(admin, project, other, users, creds, role)
    yield w

    # Teardown through the CLI too; the last test already deleted some of these.
    for who, u in users.items():
        admin.run("user", "delete", u["id"], check=False)
    for p in (project, other):
        admin.run("project", "delete", p["id"], check=False)
    admin.run("role", "delete", role["id"], check=False)


# --------------------------------------------------------------------------------------------
# Identity administration
# --------------------------------------------------------------------------------------------


def test_created_entities_look_like_keystone(world):
    p = world.project
    assert HEX_ID.match(p["id"]), p
    assert p["domain_id"] == DEFAULT_DOMAIN_ID
    assert p["enabled"] is True
    assert p["is_domain"] is False
    assert p["description"] == "tenant P"
    assert p["parent_id"] == DEFAULT_DOMAIN_ID  # top-level projects hang off their domain
    assert p["tags"] == []

    u = world.users["member"]
    assert HEX_ID.match(u["id"]), u
    assert u["name"] == world.creds["member"].user
    assert u["domain_id"] == DEFAULT_DOMAIN_ID
    assert u["enabled"] is True
    assert u["default_project_id"] == p["id"]
    assert u["description"] == "member user"
    assert "password" not in u and "password_hash" not in u
    assert world.users["other"]["default_project_id"] == world.other_project["id"]

    r = world.role
    assert HEX_ID.match(r["id"]), r
    assert r["name"].startswith("anotherrole-")
    assert r["domain_id"] is None


def test_show_commands(world):
    admin = world.admin
    p = admin.json("project", "show", world.project["name"])
    assert (p["id"], p["name"], p["enabled"]) == (
        world.project["id"],
        world.project["name"],
        True,
    )
    u = admin.json("user", "show", world.creds["reader"].user)
    assert u["id"] == world.users["reader"]["id"]
    assert u["domain_id"] == DEFAULT_DOMAIN_ID
    r = admin.json("role", "show", world.role["name"])
    assert r["id"] == world.role["id"]
    d = admin.json("domain", "show", DEFAULT_DOMAIN_ID)
    assert d["id"] == DEFAULT_DOMAIN_ID and d["name"] == ADMIN_DOMAIN and d["enabled"] is True


def test_project_and_user_lists(world):
    admin = world.admin
    projects = {p["ID"]: p["Name"] for p in admin.json("project", "list")}
    assert projects[world.project["id"]] == world.project["name"]
    assert projects[world.other_project["id"]] == world.other_project["name"]
    assert ADMIN_PROJECT in projects.values()

    long = {p["ID"]: p for p in admin.json("project", "list", "--long")}
    row = long[world.project["id"]]
    assert row["Domain ID"] == DEFAULT_DOMAIN_ID
    assert row["Enabled"] is True
    assert row["Description"] == "tenant P"

    users = {u["ID"]: u["Name"] for u in admin.json("user", "list")}
    for who, u in world.users.items():
        assert users[u["id"]] == world.creds[who].user, who
    assert ADMIN_USER in users.values()

    ulong = {u["ID"]: u for u in admin.json("user", "list", "--long")}
    row = ulong[world.users["member"]["id"]]
    assert row["Domain"] == DEFAULT_DOMAIN_ID
    assert row["Enabled"] is True
    assert row["Project"] == world.project["id"]

    # Filtered by project: the users with a role on P.
    on_p = {u["Name"] for u in admin.json("user", "list", "--project", world.project["name"])}
    assert on_p == {world.creds[w].user for w in ("member", "reader", "operator", "another")}

    roles = {r["Name"] for r in admin.json("role", "list")}
    assert {"admin", "member", "reader", world.role["name"]} <= roles


def test_role_assignment_list(world):
    admin = world.admin
    p_name = world.project["name"]
    rows = admin.json("role", "assignment", "list", "--project", p_name, "--names")
    got = {(r["Role"], r["User"], r["Project"]) for r in rows}
    want = {
        (role, f"{world.creds[who].user}@{ADMIN_DOMAIN}", f"{p_name}@{ADMIN_DOMAIN}")
        for who, role in [
            ("member", "member"),
            ("reader", "reader"),
            ("operator", "SwiftOperator"),
            ("another", world.role["name"]),
        ]
    }
    assert got == want
    for r in rows:
        assert (r["Group"], r["Domain"], r["System"], r["Inherited"]) == ("", "", "", False)

    # Without --names: ids.
    rows = admin.json("role", "assignment", "list", "--project", world.project["id"])
    member_id = world.users["member"]["id"]
    ids = {(r["User"], r["Project"]) for r in rows}
    assert (member_id, world.project["id"]) in ids
    assert all(HEX_ID.match(r["Role"]) for r in rows)

    # By user, and by user and role.
    rows = admin.json("role", "assignment", "list", "--user", world.creds["another"].user)
    assert [r["Role"] for r in rows] == [world.role["id"]]
    rows = admin.json(
        "role", "assignment", "list", "--user", world.creds["member"].user,
        "--role", "reader", "--names",
    )  # fmt: skip
    assert rows == []
    # --effective adds what member implies (reader), as Keystone's default roles do.
    rows = admin.json(
        "role", "assignment", "list", "--user", world.creds["member"].user,
        "--effective", "--names",
    )  # fmt: skip
    assert sorted(r["Role"] for r in rows) == ["member", "reader"]
    # Strata keeps no domain or group grants: those filters match nothing.
    assert admin.json("role", "assignment", "list", "--domain", DEFAULT_DOMAIN_ID) == []


def test_token_issue_as_each_user(world):
    for who in world.users:
        tok = world.osc(who).json("token", "issue")
        assert tok["user_id"] == world.users[who]["id"], who
        want_project = world.other_project if who == "other" else world.project
        assert tok["project_id"] == want_project["id"], who
        assert tok["id"] and tok["expires"], who
        # The admin validates it the way services do.
        r = requests.get(
            f"{world.admin.node.keystone_url}/auth/tokens",
            headers={"X-Auth-Token": admin_token(world), "X-Subject-Token": tok["id"]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        body = r.json()["token"]
        assert body["user"]["id"] == world.users[who]["id"]
        assert body["project"]["id"] == want_project["id"]


def test_wrong_password_fails(world):
    bad = Cred(world.creds["member"].user, "not-the-password", world.project["name"])
    p = Osc(world.admin.cli, world.admin.node, bad, world.admin.cwd).run(
        "token", "issue", check=False
    )
    assert p.returncode != 0
    assert "401" in p.stderr or "authenticate" in p.stderr.lower(), p.stderr


def test_non_admin_cannot_manage_identity(world):
    p = world.osc("member").run("project", "create", unique("nope"), check=False)
    assert p.returncode != 0
    assert "403" in p.stderr or "not authorized" in p.stderr.lower(), p.stderr


# --------------------------------------------------------------------------------------------
# Swift, through the object-store commands of the CLI
# --------------------------------------------------------------------------------------------


def test_object_store_commands(world, tmp_path):
    osc = world.osc("member")
    account = osc.json("object", "store", "account", "show")
    assert account["Account"] == world.account

    container = unique("osc")
    created = osc.json("container", "create", container)
    assert created[0]["container"] == container
    assert created[0]["account"] == world.account
    assert container in {c["Name"] for c in osc.json("container", "list")}

    data = b"hello from the openstack CLI\n"
    (tmp_path / "hello.txt").write_bytes(data)
    osc.cwd = tmp_path  # `object create` names the object after the path it is given
    up = osc.json("object", "create", container, "hello.txt")
    assert up[0]["object"] == "hello.txt"
    assert up[0]["etag"] == hashlib.md5(data).hexdigest()
    assert [o["Name"] for o in osc.json("object", "list", container)] == ["hello.txt"]
    shown = osc.json("object", "show", container, "hello.txt")
    assert shown["content-length"] == str(len(data))
    assert shown["etag"] == up[0]["etag"]
    assert shown["account"] == world.account
    assert osc("object", "save", "--file", "-", container, "hello.txt") == data.decode()

    c = osc.json("container", "show", container)
    assert c["object_count"] == "1" and c["bytes_used"] == str(len(data))

    osc("object", "delete", container, "hello.txt")
    assert osc.json("object", "list", container) == []
    osc("container", "delete", container)
    assert container not in {c["Name"] for c in osc.json("container", "list")}

    # The reader sees the account through the CLI, and cannot create a container.
    reader = world.osc("reader")
    assert reader.json("object", "store", "account", "show")["Account"] == world.account
    p = reader.run("container", "create", unique("ro"), check=False)
    assert p.returncode != 0 and "403" in p.stderr, p.stderr


# --------------------------------------------------------------------------------------------
# Swift role semantics, with tokens from `openstack token issue`
# --------------------------------------------------------------------------------------------


def token(world: World, who: str) -> str:
    """The id that `openstack token issue` prints for `who` (one per user and module)."""
    if who not in world.tokens:
        world.tokens[who] = world.osc(who).json("token", "issue")["id"]
    return world.tokens[who]


def admin_token(world: World) -> str:
    if "admin" not in world.tokens:
        world.tokens["admin"] = world.admin.json("token", "issue")["id"]
    return world.tokens["admin"]


class Swift:
    """Raw requests to the node's Swift endpoint, as one token (or none)."""

    def __init__(self, world: World, who: str | None):
        self.base = f"{world.admin.node.swift_url}/v1/{world.account}"
        self.headers = {"X-Auth-Token": token(world, who)} if who else {}

    def __call__(self, method: str, path: str = "", data: bytes | None = None, **headers):
        h = dict(self.headers)
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        url = f"{self.base}/{path}" if path else self.base
        return requests.request(method, url, data=data, headers=h, timeout=30)


@pytest.fixture(scope="module")
def stocked(world):
    """A container with one object in P's account, made by the member."""
    sw = Swift(world, "member")
    c = unique("roles")
    expect(sw("PUT", c), 201)
    expect(sw("PUT", f"{c}/obj", b"payload"), 201)
    return c


@pytest.mark.parametrize("who", ["member", "operator"])
def test_operator_roles_own_the_account(world, who):
    sw = Swift(world, who)
    expect(sw("HEAD"), 204)
    c = unique(who)
    expect(sw("PUT", c), 201)
    expect(sw("POST", c, X_Container_Meta_Color="blue"), 204)
    expect(sw("PUT", f"{c}/o", b"data"), 201)
    assert expect(sw("GET", f"{c}/o"), 200).content == b"data"
    expect(sw("POST", f"{c}/o", X_Object_Meta_A="1"), 202)
    assert expect(sw("HEAD", f"{c}/o"), 200).headers["X-Object-Meta-A"] == "1"
    assert expect(sw("GET", c), 200).text.split() == ["o"]
    assert c in expect(sw("GET"), 200).text.split()
    # Owners see and set ACLs.
    expect(sw("POST", c, X_Container_Read="*:nobody"), 204)
    assert expect(sw("HEAD", c), 204).headers.get("X-Container-Read") == "*:nobody"
    expect(sw("DELETE", f"{c}/o"), 204)
    expect(sw("GET", f"{c}/o"), 404)
    expect(sw("DELETE", c), 204)


def test_member_through_swiftclient_keystone_v3(world):
    cred = world.creds["member"]
    conn = Connection(
        authurl=world.admin.node.keystone_url,
        user=cred.user,
        key=cred.password,
        auth_version="3",
        os_options={
            "project_name": cred.project,
            "user_domain_name": ADMIN_DOMAIN,
            "project_domain_name": ADMIN_DOMAIN,
        },
        retries=0,
    )
    url, _ = conn.get_auth()
    assert url.endswith(f"/v1/{world.account}")
    c = unique("sc")
    conn.put_container(c)
    conn.put_object(c, "x", b"swiftclient")
    assert conn.get_object(c, "x")[1] == b"swiftclient"
    conn.delete_object(c, "x")
    conn.delete_container(c)


def test_reader_reads_only(world, stocked):
    sw = Swift(world, "reader")
    c = stocked
    expect(sw("HEAD"), 204)
    assert c in expect(sw("GET"), 200).text.split()
    head = expect(sw("HEAD", c), 204)
    # Not an owner: no ACLs shown (keystoneauth's reader gets no swift_owner).
    assert "X-Container-Read" not in head.headers
    assert expect(sw("GET", c), 200).text.split() == ["obj"]
    assert expect(sw("GET", f"{c}/obj"), 200).content == b"payload"
    expect(sw("HEAD", f"{c}/obj"), 200)

    expect(sw("PUT", f"{c}/new", b"x"), 403)
    expect(sw("POST", f"{c}/obj", X_Object_Meta_A="1"), 403)
    expect(sw("DELETE", f"{c}/obj"), 403)
    expect(sw("PUT", unique("ro")), 403)
    expect(sw("POST", c, X_Container_Read="*:*"), 403)
    expect(sw("DELETE", c), 403)
    expect(sw("POST", "", X_Account_Meta_A="1"), 403)
    # Nothing changed.
    member = Swift(world, "member")
    assert expect(member("GET", c), 200).text.split() == ["obj"]


def test_unrelated_role_needs_an_acl(world):
    owner = Swift(world, "member")
    sw = Swift(world, "another")
    uid = world.users["another"]["id"]
    pid = world.project["id"]

    c = unique("acl")
    expect(owner("PUT", c), 201)
    expect(owner("PUT", f"{c}/obj", b"secret"), 201)

    # No ACL: nothing at all.
    for method, path in [
        ("HEAD", ""), ("GET", ""), ("POST", ""),
        ("HEAD", c), ("GET", c), ("PUT", unique("x")), ("POST", c), ("DELETE", c),
        ("GET", f"{c}/obj"), ("HEAD", f"{c}/obj"), ("PUT", f"{c}/new"),
        ("POST", f"{c}/obj"), ("DELETE", f"{c}/obj"),
    ]:  # fmt: skip
        expect(sw(method, path, b"x" if method == "PUT" else None), 403)

    # A read ACL naming project:user grants listing and reading, and nothing else.
    expect(owner("POST", c, X_Container_Read=f"{pid}:{uid}"), 204)
    assert expect(sw("GET", c), 200).text.split() == ["obj"]
    expect(sw("HEAD", c), 204)
    assert expect(sw("GET", f"{c}/obj"), 200).content == b"secret"
    expect(sw("HEAD", f"{c}/obj"), 200)
    expect(sw("PUT", f"{c}/new", b"x"), 403)
    expect(sw("POST", f"{c}/obj", X_Object_Meta_A="1"), 403)
    expect(sw("DELETE", f"{c}/obj"), 403)
    expect(sw("POST", c, X_Container_Read="*:*"), 403)
    expect(sw("DELETE", c), 403)
    expect(sw("GET"), 403)  # the account stays closed
    expect(sw("HEAD"), 403)

    # A write ACL with a wildcard project: writes, but no reads.
    expect(owner("POST", c, X_Container_Read="", X_Container_Write=f"*:{uid}"), 204)
    expect(sw("PUT", f"{c}/new", b"written"), 201)
    expect(sw("POST", f"{c}/new", X_Object_Meta_B="2"), 202)
    expect(sw("GET", f"{c}/new"), 403)
    expect(sw("GET", c), 403)
    expect(sw("DELETE", f"{c}/obj"), 204)
    expect(sw("PUT", unique("x")), 403)  # containers stay the owner's
    expect(sw("DELETE", c), 403)
    got = expect(owner("GET", f"{c}/new"), 200)
    assert got.content == b"written" and got.headers["X-Object-Meta-B"] == "2"

    # Both, by user name this time (keystoneauth allows names in the default domain).
    name = world.creds["another"].user
    expect(owner("POST", c, X_Container_Read=f"*:{name}", X_Container_Write=f"*:{name}"), 204)
    expect(sw("GET", f"{c}/new"), 200)
    expect(sw("DELETE", f"{c}/new"), 204)
    expect(sw("GET", c), 204)  # empty listing

    # An ACL naming the role lets holders of that role on this project in.
    expect(owner("POST", c, X_Container_Read=world.role["name"], X_Container_Write=""), 204)
    expect(owner("PUT", f"{c}/r", b"by role"), 201)
    assert expect(sw("GET", f"{c}/r"), 200).content == b"by role"
    expect(sw("PUT", f"{c}/r", b"x"), 403)

    expect(owner("DELETE", f"{c}/r"), 204)
    expect(owner("DELETE", c), 204)


def test_other_project_is_shut_out(world, stocked):
    sw = Swift(world, "other")
    c = stocked
    for method, path in [
        ("HEAD", ""), ("GET", ""), ("POST", ""), ("PUT", unique("x")),
        ("GET", c), ("HEAD", c), ("GET", f"{c}/obj"), ("PUT", f"{c}/x"), ("DELETE", f"{c}/obj"),
    ]:  # fmt: skip
        expect(sw(method, path, b"x" if method == "PUT" else None), 403)

    # A role-name ACL only counts on the role holder's own project: "member" on P2 is not
    # "member" on P (keystoneauth checks the tenant before role ACLs).
    owner = Swift(world, "member")
    c2 = unique("cross")
    expect(owner("PUT", c2, X_Container_Read="member"), 201)
    expect(owner("PUT", f"{c2}/o", b"cross"), 201)
    expect(sw("GET", f"{c2}/o"), 403)
    # A user ACL does let the other project's user read.
    uid = world.users["other"]["id"]
    pid2 = world.other_project["id"]
    expect(owner("POST", c2, X_Container_Read=f"{pid2}:{uid}"), 204)
    assert expect(sw("GET", f"{c2}/o"), 200).content == b"cross"
    expect(sw("PUT", f"{c2}/o", b"x"), 403)
    expect(sw("GET"), 403)
    expect(owner("DELETE", f"{c2}/o"), 204)
    expect(owner("DELETE", c2), 204)

    # And with the other project's own account, the other user is owner.
    own = requests.get(
        f"{world.admin.node.swift_url}/v1/AUTH_{pid2}",
        headers={"X-Auth-Token": token(world, "other")},
        timeout=10,
    )
    expect(own, 200, 204)


def test_no_token_or_a_bad_one_is_401(world, stocked):
    anon = Swift(world, None)
    c = stocked
    for method, path in [
        ("HEAD", ""), ("GET", ""), ("GET", c), ("HEAD", c), ("PUT", unique("x")),
        ("GET", f"{c}/obj"), ("PUT", f"{c}/x"), ("DELETE", f"{c}/obj"),
    ]:  # fmt: skip
        expect(anon(method, path, b"x" if method == "PUT" else None), 401)
        expect(anon(method, path, b"x" if method == "PUT" else None, X_Auth_Token="bogus"), 401)


def test_revoked_grant_and_deleted_user_lose_access(world, stocked):
    """`openstack role remove` and `user delete` take effect on the tokens already issued."""
    admin = world.admin
    name = unique("u-temp")
    pw = "pw-" + uuid.uuid4().hex
    user = admin.json(
        "user", "create", "--project", world.project["id"], "--password", pw, name
    )
    admin("role", "add", "--project", world.project["id"], "--user", user["id"], "member")
    cred = Cred(name, pw, world.project["name"])
    tok = Osc(admin.cli, admin.node, cred, admin.cwd).json("token", "issue")["id"]
    url = f"{admin.node.swift_url}/v1/{world.account}/{stocked}/obj"
    expect(requests.get(url, headers={"X-Auth-Token": tok}, timeout=10), 200)

    admin("role", "remove", "--project", world.project["id"], "--user", user["id"], "member")
    expect(requests.get(url, headers={"X-Auth-Token": tok}, timeout=10), 401, 403)
    rows = admin.json("role", "assignment", "list", "--user", user["id"])
    assert rows == []

    admin("user", "delete", user["id"])
    assert user["id"] not in {u["ID"] for u in admin.json("user", "list")}
    p = admin.run("user", "show", user["id"], check=False)
    assert p.returncode != 0


def test_delete_users_and_projects(world):
    """Last: the module's users and projects go, through the CLI."""
    admin = world.admin
    member_token = token(world, "member")
    admin("user", "delete", *[u["id"] for u in world.users.values()])
    users = {u["ID"] for u in admin.json("user", "list")}
    assert not users & {u["id"] for u in world.users.values()}
    # Old tokens die with their user.
    r = requests.head(
        f"{admin.node.swift_url}/v1/{world.account}",
        headers={"X-Auth-Token": member_token},
        timeout=10,
    )
    expect(r, 401)

    admin("project", "delete", world.project["id"], world.other_project["id"])
    projects = {p["ID"] for p in admin.json("project", "list")}
    assert world.project["id"] not in projects and world.other_project["id"] not in projects
    assert admin.run("project", "show", world.project["id"], check=False).returncode != 0
    # Its grants went with it (the CLI can no longer name the project, so ask the API).
    r = requests.get(
        f"{admin.node.keystone_url}/role_assignments",
        params={"scope.project.id": world.project["id"]},
        headers={"X-Auth-Token": admin_token(world)},
        timeout=10,
    )
    assert expect(r, 200).json()["role_assignments"] == []
    admin("role", "delete", world.role["id"])
    assert world.role["name"] not in {r["Name"] for r in admin.json("role", "list")}
