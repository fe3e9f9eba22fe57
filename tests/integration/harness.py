"""Runs real `strata serve` processes for the integration tests.

A `Node` is one server process with its own config file, data directory and log file, all
inside a pytest temporary directory. A `Cluster` is several nodes that list each other as
members. Everything here talks only to loopback addresses (127.0.0.0/8).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from swiftclient.client import Connection

# How long a node (or every node of a cluster) may take to start serving.
READY_TIMEOUT = float(os.environ.get("STRATA_READY_TIMEOUT", "60"))
# Disk size of every test node: small, so tests stay light on the machine's disk.
DISK_BYTES = 1 << 30
# The three cluster nodes each get their own loopback address, as if on three hosts.
CLUSTER_ADDRS = ("127.0.1.1", "127.0.1.2", "127.0.1.3")
ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"
ADMIN_DOMAIN = "Default"
LOG_TAIL_LINES = 80

MiB = 1 << 20

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def scrub_proxy_env(env: dict[str, str]) -> dict[str, str]:
    """Drops proxy settings so no client (ours, the swift CLI, or the nodes' own HTTP clients)
    sends loopback traffic through a proxy elsewhere."""
    for var in list(env):
        if var.lower() in _PROXY_VARS:
            del env[var]
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.0/8,localhost"
    return env


def require_loopback(host: str) -> None:
    if not host.startswith("127."):
        raise ValueError(f"tests only use loopback addresses (127.0.0.0/8), got {host!r}")


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_ports(host: str, count: int) -> list[int]:
    """Returns `count` distinct TCP ports that are free on `host`.

    Each port comes from binding port 0 on `host`. All sockets of one call stay open until the
    call ends, so the kernel cannot return the same port twice within it, and port numbers
    handed out earlier in this session, on any host, are skipped, so no two nodes share a
    number even when they listen on different loopback addresses.
    """
    require_loopback(host)
    with _ports_lock:
        socks: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, 0))
                port = s.getsockname()[1]
                if port not in _ports_handed_out:
                    ports.append(port)
        finally:
            for s in socks:
                s.close()
        _ports_handed_out.update(ports)
        return ports


@dataclass(frozen=True)
class Ports:
    keystone: int
    swift: int
    rpc: int
    nbd: int
    cinder: int
    compute: int
    glance: int

    @classmethod
    def allocate(cls, host: str) -> "Ports":
        return cls(*free_ports(host, 7))


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One entry of `[[cluster.nodes]]`."""

    id: int
    rpc: str
    zone: str


@dataclass(frozen=True)
class ClusterSettings:
    replicas: int = 1
    write_quorum: int = 1
    part_power: int = 8
    members: tuple[Member, ...] = ()


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string for the text used here (paths, addresses).
    return json.dumps(value)


def render_config(
    *,
    node_id: int,
    zone: str,
    data_dir: Path,
    bind: str,
    ports: Ports,
    cluster: ClusterSettings,
    disk_bytes: int = DISK_BYTES,
    disks: int = 1,
) -> str:
    """The TOML config of one node (keys as `strata serve --config` reads them): `disks`
    disks (`disk0`, `disk1`, ...) of `disk_bytes` each."""
    lines = [
        f"node-id = {node_id}",
        f"zone = {_toml_str(zone)}",
        f"data-dir = {_toml_str(str(data_dir))}",
        f"bind = {_toml_str(bind)}",
        "",
        "[ports]",
        f"keystone = {ports.keystone}",
        f"swift = {ports.swift}",
        f"rpc = {ports.rpc}",
        f"nbd = {ports.nbd}",
        f"cinder = {ports.cinder}",
        f"compute = {ports.compute}",
        f"glance = {ports.glance}",
        "",
    ]
    for d in range(disks):
        lines += ["[[disks]]", f'path = "disk{d}"', f"capacity-bytes = {disk_bytes}", ""]
    lines += [
        "[cluster]",
        f"replicas = {cluster.replicas}",
        f"write-quorum = {cluster.write_quorum}",
        f"part-power = {cluster.part_power}",
    ]
    for m in cluster.members:
        lines += [
            "",
            "[[cluster.nodes]]",
            f"id = {m.id}",
            f"rpc = {_toml_str(m.rpc)}",
            f"zone = {_toml_str(m.zone)}",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class NodeError(AssertionError):
    """A node failed to start, died, or did not become ready."""


# Every process started in this session, so a last-resort cleanup can kill what is left.
_all_nodes: list["Node"] = []
_all_nodes_lock = threading.Lock()


def kill_all_started() -> None:
    with _all_nodes_lock:
        nodes = list(_all_nodes)
    for node in nodes:
        node.kill9()


def _pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL` makes the kernel SIGKILL the node if the thread that started
    it goes away, so no node outlives a test run that was itself killed hard. setpriv execs
    the server, so the child's PID stays the server's PID. Nodes are started from pytest's
    main thread only (the death signal follows the starting *thread*, not the process)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Node:
    """One `strata serve` process. Its files live in `workdir`:
    `<name>.toml` (config), `<name>/` (data-dir) and `<name>.log` (stdout+stderr, appended
    across restarts)."""

    def __init__(
        self,
        *,
        binary: Path,
        workdir: Path,
        node_id: int,
        bind: str,
        password: str,
        zone: str = "zone1",
        ports: Ports | None = None,
        cluster: ClusterSettings = ClusterSettings(),
        disk_bytes: int = DISK_BYTES,
        disks: int = 1,
    ):
        require_loopback(bind)
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.node_id = node_id
        self.name = f"node{node_id}"
        self.bind = bind
        self.password = password
        self.ports = ports or Ports.allocate(bind)
        self.config_path = self.workdir / f"{self.name}.toml"
        self.data_dir = self.workdir / self.name
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_config(
                node_id=node_id,
                zone=zone,
                data_dir=self.data_dir,
                bind=bind,
                ports=self.ports,
                cluster=cluster,
                disk_bytes=disk_bytes,
                disks=disks,
            )
        )
        with _all_nodes_lock:
            _all_nodes.append(self)

    # --- addresses ---------------------------------------------------------------------

    @property
    def swift_url(self) -> str:
        return f"http://{self.bind}:{self.ports.swift}"

    @property
    def tempauth_url(self) -> str:
        return f"{self.swift_url}/auth/v1.0"

    @property
    def keystone_url(self) -> str:
        return f"http://{self.bind}:{self.ports.keystone}/v3"

    @property
    def cinder_url(self) -> str:
        return f"http://{self.bind}:{self.ports.cinder}"

    @property
    def compute_url(self) -> str:
        return f"http://{self.bind}:{self.ports.compute}"

    @property
    def image_url(self) -> str:
        return f"http://{self.bind}:{self.ports.glance}"

    def nbd_url(self, export: str) -> str:
        return f"nbd://{self.bind}:{self.ports.nbd}/{export}"

    def nbd_unix_url(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.data_dir / 'nbd.sock'}"

    def admin(self, *args: str, timeout: float = 60) -> str:
        """Runs `strata admin ARGS --rpc <this node>` and returns its output."""
        p = subprocess.run(
            [str(self.binary), "admin", *args, "--rpc", f"{self.bind}:{self.ports.rpc}"],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if p.returncode != 0:
            raise NodeError(f"strata admin {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def status(self) -> dict:
        """`strata admin status --json` as this node answers it (the whole cluster)."""
        return json.loads(self.admin("status", "--json"))

    def disks(self) -> list[dict]:
        """This node's disks as `strata admin status --json` reports them."""
        [me] = [n for n in self.status()["nodes"] if n["id"] == self.node_id]
        return me["disks"]

    # --- process control ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Starts (or restarts) the node with its config and whatever its data-dir holds."""
        if self.running():
            raise NodeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        env = scrub_proxy_env(dict(os.environ))
        env["STRATA_ADMIN_PASSWORD"] = self.password
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        cmd = [*_pdeathsig_prefix(), str(self.binary), "serve", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            log.write(
                f"\n===== start #{self.starts} of {self.name} at {time.strftime('%H:%M:%S')}: "
                f"{' '.join(cmd)}\n".encode()
            )
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the terminal reaches pytest, whose teardown
                # then kills the nodes, rather than racing it.
                start_new_session=True,
            )

    def kill9(self, timeout: float = 30) -> None:
        """SIGKILL by PID and wait until the process is gone. No-op when not running."""
        proc = self.proc
        # poll() first: once a child is reaped its PID may belong to someone else.
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)

    # --- readiness ----------------------------------------------------------------------

    def tempauth(self, timeout: float = 10) -> tuple[str, str]:
        """TempAuth login as the bootstrap admin; returns (storage URL, token)."""
        with requests.Session() as s:
            s.trust_env = False
            r = s.get(
                self.tempauth_url,
                headers={
                    "X-Auth-User": f"{ADMIN_PROJECT}:{ADMIN_USER}",
                    "X-Auth-Key": self.password,
                },
                timeout=timeout,
            )
        if not 200 <= r.status_code < 300:
            raise NodeError(f"TempAuth on {self.name} answered {r.status_code}: {r.text[:200]}")
        token = r.headers.get("X-Auth-Token")
        url = r.headers.get("X-Storage-Url")
        if not token or not url:
            raise NodeError(f"TempAuth on {self.name} lacks X-Auth-Token/X-Storage-Url")
        return url, token

    def probe(self) -> str | None:
        """None if the node serves Swift, TempAuth and Keystone right now; else why not."""
        try:
            with requests.Session() as s:
                s.trust_env = False
                r = s.get(f"{self.swift_url}/info", timeout=2)
            if r.status_code != 200:
                return f"GET /info answered {r.status_code}"
            url, _ = self.tempauth(timeout=2)
            if not url.startswith(f"{self.swift_url}/v1/AUTH_"):
                return f"unexpected X-Storage-Url {url!r}"
            # Keystone has no readiness rule of its own: its port accepting is enough.
            socket.create_connection((self.bind, self.ports.keystone), timeout=2).close()
        except (requests.RequestException, OSError, NodeError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT, deadline: float | None = None) -> None:
        """Waits until `probe()` passes; fails early, with the log tail, if the process dies."""
        deadline = deadline if deadline is not None else time.monotonic() + timeout
        started = time.monotonic()
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise NodeError(
                    f"{self.name} is not running (exit code {code}); log tail:\n{self.log_tail()}"
                )
            why = self.probe()
            if why is None:
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"{self.name} not ready after {time.monotonic() - started:.0f}s: {why}\n"
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    # --- clients -------------------------------------------------------------------------

    def connection(self, retries: int = 0, timeout: float = 60) -> Connection:
        """A python-swiftclient connection through this node's gateway (TempAuth).

        `retries` is 0 by default so that any error reaches the test; callers that expect a
        transient failure pass a small number and say why.
        """
        return Connection(
            authurl=self.tempauth_url,
            user=f"{ADMIN_PROJECT}:{ADMIN_USER}",
            key=self.password,
            auth_version="1.0",
            retries=retries,
            starting_backoff=0.5,
            max_backoff=2,
            timeout=timeout,
        )

    # --- files ---------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    def remove_data(self) -> None:
        """Deletes the data-dir (disk files are large); config and log stay."""
        if self.running():
            raise NodeError(f"{self.name} still running")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.bind} swift={self.ports.swift} pid={self.pid}>"


class Cluster:
    """Nodes 1..N on CLUSTER_ADDRS, each with fresh ports, all listed as members."""

    def __init__(
        self,
        *,
        binary: Path,
        workdir: Path,
        password: str,
        addrs: tuple[str, ...] = CLUSTER_ADDRS,
        replicas: int = 3,
        write_quorum: int = 2,
        part_power: int = 8,
    ):
        ports = [Ports.allocate(a) for a in addrs]
        members = tuple(
            Member(id=i + 1, rpc=f"{a}:{p.rpc}", zone=f"zone{i + 1}")
            for i, (a, p) in enumerate(zip(addrs, ports))
        )
        settings = ClusterSettings(
            replicas=replicas, write_quorum=write_quorum, part_power=part_power, members=members
        )
        self.nodes = [
            Node(
                binary=binary,
                workdir=workdir,
                node_id=m.id,
                bind=a,
                zone=m.zone,
                password=password,
                ports=p,
                cluster=settings,
            )
            for m, a, p in zip(members, addrs, ports)
        ]

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def start_all(self) -> None:
        for n in self.nodes:
            n.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        # The nodes come up together (the meta group needs a leader), so one shared deadline.
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            n.wait_ready(deadline=deadline)

    def kill9_all(self) -> None:
        """SIGKILL every node first, then wait for each: as close to 'at once' as it gets."""
        procs = [n.proc for n in self.nodes if n.running()]
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Object contents
# --------------------------------------------------------------------------------------------


def payload(seed: int, size: int) -> bytes:
    """Reproducible random bytes: tests keep (seed, size, md5) and not the data itself."""
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class ObjSpec:
    seed: int
    size: int
    md5: str

    @classmethod
    def make(cls, seed: int, size: int) -> tuple["ObjSpec", bytes]:
        data = payload(seed, size)
        return cls(seed, size, hashlib.md5(data).hexdigest()), data

    def mismatch(self, got: bytes) -> str | None:
        """None if `got` is exactly this object's content; else a description."""
        if len(got) == self.size and hashlib.md5(got).hexdigest() == self.md5:
            return None
        want = payload(self.seed, self.size)
        first = next(
            (i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got))
        )
        return f"{len(got)} bytes, want {self.size}; first difference at byte {first}"
