"""Running the real `openstack` command line (python-openstackclient) against a node.

Every CLI call gets its credentials on the command line; nothing OS_* comes from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import venv_command
from harness import ADMIN_DOMAIN, Node


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def openstack_cli() -> Path:  # a fixture: import it into the test module that uses it
    """The `openstack` command of python-openstackclient, from the venv that runs these tests."""
    return venv_command("openstack")


def cli_env() -> dict[str, str]:
    # Only the command line chooses the credentials: no OS_* settings (nor clouds.yaml
    # chosen through them) from outside.
    return {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_"))}


@dataclass
class Cred:
    user: str
    password: str
    project: str


class Osc:
    """Runs `openstack` against one node as one user."""

    def __init__(self, cli: Path, node: Node, cred: Cred, cwd: Path):
        self.cli, self.node, self.cred, self.cwd = cli, node, cred, cwd

    def args(self) -> list[str]:
        return [
            "--os-auth-url", self.node.keystone_url,
            "--os-identity-api-version", "3",
            "--os-username", self.cred.user,
            "--os-password", self.cred.password,
            "--os-project-name", self.cred.project,
            "--os-user-domain-name", ADMIN_DOMAIN,
            "--os-project-domain-name", ADMIN_DOMAIN,
            "--os-interface", "public",
        ]  # fmt: skip

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.cli), *self.args(), *args]
        p = subprocess.run(
            cmd,
            cwd=self.cwd,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and p.returncode != 0:
            secrets = {self.cred.password, self.node.password}
            shown = " ".join("***" if a in secrets else a for a in cmd)
            pytest.fail(
                f"`{shown}` exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}",
                pytrace=False,
            )
        return p

    def __call__(self, *args: str) -> str:
        return self.run(*args).stdout

    def json(self, *args: str):
        out = self(*args, "-f", "json")
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            pytest.fail(f"`openstack {' '.join(args)} -f json` printed no JSON:\n{out}")


def keystone_token(node: Node, cred: Cred) -> tuple[str, str]:
    """A project-scoped token for `cred` straight from Keystone: (token, project id)."""
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": cred.user, "domain": {"name": ADMIN_DOMAIN}, "password": cred.password}}},
        "scope": {"project": {"name": cred.project, "domain": {"name": ADMIN_DOMAIN}}},
    }}  # fmt: skip
    r = requests.post(f"{node.keystone_url}/auth/tokens", json=body, timeout=30)
    assert r.status_code == 201, f"token for {cred.user}: {r.status_code} {r.text[:200]}"
    return r.headers["X-Subject-Token"], r.json()["token"]["project"]["id"]


def expect(resp: requests.Response, *codes: int) -> requests.Response:
    """`resp`, once its status is one of `codes` (else the test fails, showing the answer)."""
    assert resp.status_code in codes, (
        f"{resp.request.method} {resp.url}: {resp.status_code} (wanted {codes}) {resp.text[:300]}"
    )
    return resp
