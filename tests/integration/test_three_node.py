"""Three nodes (replicas 3, write-quorum 2) on three loopback addresses, with nodes killed by
SIGKILL: data stays readable with one node down, and acknowledged writes survive a kill of
the whole cluster."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from swiftclient.client import Connection

from harness import READY_TIMEOUT, Cluster, MiB, Node, ObjSpec

THREADS = 8
CONTAINER = "objects"

# Reads after a node was killed may use ONE client retry. The gateway's connections to the
# dead peer broke with it: a request in flight at that moment, or the first one to find the
# peer gone, may fail with a 5xx although the live replicas could serve it, and a second
# attempt then succeeds. A larger retry count or a long backoff would hide a gateway that
# keeps failing, so it stays at 1, and the number of reads that needed the retry is capped
# (MAX_RETRIED_READS): the few in flight while the gateway notices, not a share of all reads
# (as a gateway failing whenever the dead node holds a replica would show). A meta leader
# election after the kill is waited out before the reads (wait_serving), not retried through.
# Writes, and reads on a cluster that lost no node, use no retry at all.
READ_RETRIES = 1
MAX_RETRIED_READS = 2 * THREADS


class Connections:
    """One swiftclient Connection per (thread, node): a Connection is not thread-safe."""

    def __init__(self, retries: int):
        self.retries = retries
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def get(self, node: Node) -> Connection:
        conns = self._local.__dict__.setdefault("conns", {})
        if node.name not in conns:
            conns[node.name] = node.connection(retries=self.retries)
            with self._lock:
                self._all.append(conns[node.name])
        return conns[node.name]

    def close(self) -> None:
        for c in self._all:
            c.close()


def run_parallel(fn, items) -> None:
    """Calls fn(item) for every item on THREADS threads; re-raises the first error. On an
    error (or a test timeout) the calls not yet started are dropped rather than waited for."""
    pool = ThreadPoolExecutor(THREADS)
    try:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def random_size(rng: random.Random, top: int) -> int:
    """Mostly small and medium objects with a fair share of large ones, up to `top`."""
    bucket = rng.random()
    if bucket < 0.35:
        return rng.randint(0, 8 * 1024)
    if bucket < 0.7:
        return rng.randint(8 * 1024, 256 * 1024)
    return rng.randint(256 * 1024, top)


def upload_all(gateways: list[Node], objects: dict[str, ObjSpec]) -> None:
    """PUTs every object with THREADS threads; object i goes through gateways[i % len]."""
    conns = Connections(retries=0)
    names = list(objects)

    def put(i: int) -> None:
        name = names[i]
        spec, data = ObjSpec.make(objects[name].seed, objects[name].size)
        etag = conns.get(gateways[i % len(gateways)]).put_object(CONTAINER, name, data)
        assert etag == spec.md5, f"{name}: ETag {etag} != md5 {spec.md5}"

    try:
        run_parallel(put, range(len(names)))
    finally:
        conns.close()


def read_all(gateway: Node, objects: dict[str, ObjSpec]) -> int:
    """GETs every object through `gateway` and checks its bytes; returns how many reads
    needed the client retry (see READ_RETRIES)."""
    conns = Connections(retries=READ_RETRIES)
    problems: list[str] = []
    retried = 0
    lock = threading.Lock()

    def get(name: str) -> None:
        nonlocal retried
        conn = conns.get(gateway)
        try:
            _, body = conn.get_object(CONTAINER, name)
            problem = objects[name].mismatch(body)
        except Exception as e:  # noqa: BLE001 - collected, so one report shows them all
            problem = f"GET failed: {type(e).__name__}: {e}"
        with lock:
            retried += conn.attempts > 1
            if problem:
                problems.append(f"{name}: {problem}")

    try:
        run_parallel(get, objects)
    finally:
        conns.close()
    assert not problems, (
        f"{len(problems)} of {len(objects)} objects wrong via {gateway.name}:\n"
        + "\n".join(sorted(problems)[:20])
    )
    return retried


def wait_serving(gateway: Node, timeout: float = READY_TIMEOUT) -> float:
    """After a node died, the survivors may first need to elect a new meta leader; waits
    until `gateway` answers a container HEAD again. Returns the seconds it took."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        why = gateway.probe()
        if why is None:
            conn = gateway.connection()
            try:
                conn.head_container(CONTAINER)
                return time.monotonic() - started
            except Exception as e:  # noqa: BLE001 - anything not yet serving
                why = f"HEAD container: {e}"
            finally:
                conn.close()
        last = why
        time.sleep(0.25)
    raise AssertionError(f"{gateway.name} not serving {timeout:.0f}s after a peer died: {last}")


def check_listing(gateway: Node, objects: dict[str, ObjSpec], retries: int = 0) -> None:
    """The container listing and the container and account counts show exactly `objects`."""
    conn = gateway.connection(retries=retries)
    try:
        headers, listing = conn.get_container(CONTAINER, full_listing=True)
        assert sorted(o["name"] for o in listing) == sorted(objects)
        assert len(listing) == len(objects)
        assert int(headers["x-container-object-count"]) == len(objects)
        assert int(headers["x-container-bytes-used"]) == sum(s.size for s in objects.values())
        # The account holds this one container only.
        account = conn.head_account()
        assert int(account["x-account-object-count"]) == len(objects)
        assert int(account["x-account-container-count"]) == 1
    finally:
        conn.close()


def wait_repaired(nodes: list[Node], timeout: float = 120) -> dict[int, int]:
    """Waits until no live node holds a hint and every node holds the same number of chunks
    (three replicas on three nodes: each node has a copy of every chunk). Returns the chunk
    count per node id."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        status = nodes[0].status()
        live = [n for n in status["nodes"] if n["up"]]
        chunks = {n["id"]: sum(d["chunks"] for d in n["disks"]) for n in live}
        hints = sum(n["pending_hints"] for n in live)
        last = (chunks, hints)
        if len(live) == len(nodes) and hints == 0 and len(set(chunks.values())) == 1:
            return chunks
        time.sleep(1)
    raise AssertionError(f"replicas not repaired in {timeout}s: chunks, hints = {last}")


def test_survives_one_node_down_at_a_time(cluster: Cluster):
    n1, n2, n3 = cluster.nodes
    rng = random.Random(20240301)
    # Edge sizes first (empty, one byte, around 4 KiB and 1 MiB), then random ones.
    sizes = [0, 1, 4095, 4096, 4097, MiB - 1, MiB, MiB + 1, 5 * MiB // 2]
    sizes += [random_size(rng, 5 * MiB // 2) for _ in range(300 - len(sizes))]
    objects = {}
    for i, size in enumerate(sizes):
        objects[f"obj-{i:03d}"] = ObjSpec.make(seed=1_000_000 + i, size=size)[0]

    setup = n1.connection()
    setup.put_container(CONTAINER)
    setup.close()
    upload_all([n1, n2], objects)
    check_listing(n1, objects)

    # Node 2 down: everything through node 1.
    n2.kill9()
    took = wait_serving(n1)
    print(f"node1 served again {took:.1f}s after node2 was killed")
    retried = read_all(n1, objects)
    print(f"reads via node1 that needed a retry: {retried}")
    assert retried <= MAX_RETRIED_READS
    check_listing(n1, objects, retries=READ_RETRIES)

    # Writes while node 2 is down reach nodes 1 and 3 (the write quorum) and leave hints
    # for node 2.
    missed = {}
    for i in range(60):
        missed[f"missed-{i:03d}"] = ObjSpec.make(seed=2_000_000 + i, size=random_size(rng, 2 * MiB))[0]
    upload_all([n1, n3], missed)
    objects.update(missed)

    # Node 2 back: hinted handoff brings it every chunk it missed.
    n2.start()
    n2.wait_ready()
    chunks = wait_repaired([n1, n2, n3])
    print(f"chunks per node after node2 caught up: {chunks}")

    # Node 3 down: everything through node 2.
    n3.kill9()
    took = wait_serving(n2)
    print(f"node2 served again {took:.1f}s after node3 was killed")
    retried = read_all(n2, objects)
    print(f"reads via node2 that needed a retry: {retried}")
    assert retried <= MAX_RETRIED_READS
    check_listing(n2, objects, retries=READ_RETRIES)

    # Node 3 back: the whole cluster serves again.
    n3.start()
    cluster.wait_ready()
    check_listing(n3, objects, retries=READ_RETRIES)
    wait_repaired([n1, n2, n3])


def test_whole_cluster_kill_mid_upload(cluster: Cluster):
    setup = cluster.node(1).connection()
    setup.put_container(CONTAINER)
    setup.close()

    # Written by the workers under `lock`.
    attempted: dict[str, ObjSpec] = {}  # every PUT started, acknowledged or not
    acked: dict[str, ObjSpec] = {}  # PUTs that returned the right ETag
    unexpected: list[str] = []  # failures before the kill, or wrong ETags
    lock = threading.Lock()
    killed = threading.Event()  # set just before the kill: later failures are expected
    stop = threading.Event()

    def worker(tid: int) -> None:
        gateway = cluster.nodes[tid % len(cluster.nodes)]
        conn = gateway.connection(retries=0, timeout=30)
        rng = random.Random(tid)
        try:
            for n in range(100_000):
                if stop.is_set():
                    return
                name = f"w{tid}/obj-{n:05d}"
                spec, data = ObjSpec.make(seed=tid * 1_000_000 + n, size=random_size(rng, MiB))
                with lock:
                    attempted[name] = spec
                try:
                    etag = conn.put_object(CONTAINER, name, data)
                except Exception as e:  # noqa: BLE001 - judged by whether the kill came first
                    if not killed.is_set():
                        with lock:
                            unexpected.append(f"{name} via {gateway.name}: {e}")
                    return
                with lock:
                    if etag == spec.md5:
                        acked[name] = spec
                    else:
                        unexpected.append(f"{name}: ETag {etag} != md5 {spec.md5}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(3)
    # Make sure the kill hits a cluster that has taken a fair number of writes.
    deadline = time.monotonic() + 30
    while len(acked) < 4 * THREADS and time.monotonic() < deadline and not unexpected:
        time.sleep(0.1)

    killed.set()
    cluster.kill9_all()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "upload threads hung after the kill"
    assert not unexpected, "uploads failed before the kill:\n" + "\n".join(unexpected[:20])
    with lock:
        acked_now = dict(acked)
        attempted_now = dict(attempted)
    print(f"{len(acked_now)} uploads acknowledged before the kill, {len(attempted_now)} started")
    assert acked_now, "no upload was acknowledged before the kill"

    cluster.start_all()
    cluster.wait_ready()

    # Reads right after a full restart may still meet peers that are connecting; the same
    # single retry as in the one-node-down test (see READ_RETRIES).
    gateway = cluster.node(1)
    retried = read_all(gateway, acked_now)
    print(f"reads after the restart that needed a retry: {retried}")
    assert retried <= MAX_RETRIED_READS

    conn = gateway.connection(retries=READ_RETRIES)
    try:
        _, listing = conn.get_container(CONTAINER, full_listing=True)
    finally:
        conn.close()
    listed = {o["name"]: o for o in listing}
    missing = sorted(set(acked_now) - set(listed))
    assert not missing, f"{len(missing)} acknowledged objects not listed: {missing[:20]}"

    # Uploads cut off by the kill may or may not have landed, but whatever the listing shows
    # must be whole: listed with the right hash and size, and readable.
    unknown = sorted(n for n in listed if n not in attempted_now)
    assert not unknown, f"listing shows objects never uploaded: {unknown[:20]}"
    in_flight = {n: attempted_now[n] for n in listed if n not in acked_now}
    for name, spec in in_flight.items():
        assert listed[name]["hash"] == spec.md5, f"{name}: listed hash differs from its content"
        assert listed[name]["bytes"] == spec.size, f"{name}: listed size differs"
    if in_flight:
        read_all(gateway, in_flight)
