"""Every byte on disk carries a checksum: a replica whose data file is damaged under a
running cluster is caught on read, and the object is served from a healthy replica."""

from __future__ import annotations

import os
import random
import time

from harness import MiB, Cluster, ObjSpec

CONTAINER = "scrubbed"


def damage(data_file, used_bytes: int, rng: random.Random, count: int) -> int:
    """Flips one byte in `count` random 4 KiB blocks of the used part of a data file, past
    the superblock in block 0. Written through the page cache: the engine's O_DIRECT reads
    see it (the kernel writes dirty pages back before a direct read of the range)."""
    blocks = max(2, used_bytes // 4096 + 1)
    flipped = 0
    with open(data_file, "r+b") as f:
        for block in rng.sample(range(1, blocks), min(count, blocks - 1)):
            offset = block * 4096 + rng.randrange(4096)
            f.seek(offset)
            old = f.read(1)
            if not old:
                continue
            f.seek(offset)
            f.write(bytes([old[0] ^ 0xFF]))
            flipped += 1
        f.flush()
        os.fsync(f.fileno())
    return flipped


def upload(conn, rng: random.Random, count: int, sizes: list[int], seed: int, prefix: str):
    """Puts `count` objects of sizes drawn from `sizes`; returns their specs by name."""
    conn.put_container(CONTAINER)
    objects: dict[str, ObjSpec] = {}
    for i in range(count):
        spec, data = ObjSpec.make(seed=seed + i, size=rng.choice(sizes))
        assert conn.put_object(CONTAINER, f"{prefix}{i:02d}", data) == spec.md5
        objects[f"{prefix}{i:02d}"] = spec
    return objects


def used_bytes(objects: dict[str, ObjSpec]) -> int:
    """The data area the objects fill: the allocator fills it from its start, so their
    blocks come first."""
    return sum(-(-s.size // 4096) * 4096 for s in objects.values())


def read_back(conn, objects: dict[str, ObjSpec]) -> None:
    """Every object reads back byte-exact."""
    for name, spec in objects.items():
        _, body = conn.get_object(CONTAINER, name)
        assert spec.mismatch(body) is None, f"{name}: {spec.mismatch(body)}"


def test_corrupt_replica_is_detected_and_bypassed(cluster: Cluster):
    n1 = cluster.node(1)
    conn = n1.connection()
    rng = random.Random(7)
    objects = upload(conn, rng, 40, [4096, 65536, MiB + 5, 2 * MiB], seed=5_000, prefix="o")

    # Node 1's gateway reads its local replica first: damage it heavily.
    data_file = n1.data_dir / "disk0" / "chunks.dat"
    flipped = damage(data_file, used_bytes(objects), rng, count=400)
    assert flipped > 100

    read_back(conn, objects)
    conn.close()
    assert b"corrupt" in n1.log_path.read_bytes().lower(), "no corruption was reported in the log"


def test_a_node_alone_keeps_a_replica_on_each_of_its_disks(three_disk_node):
    """Three replicas on one node with three disks: every chunk lands on every disk (the
    third copy may finish after the write quorum answered), and an object whose copies on
    two disks are damaged is still served intact from the third."""
    node = three_disk_node
    conn = node.connection()
    rng = random.Random(11)
    sizes = [1, 4096, 65536, MiB + 5, 2 * MiB + 3]
    objects = upload(conn, rng, 30, sizes, seed=7_000, prefix="r")

    deadline = time.monotonic() + 60
    while True:
        chunks = [d["chunks"] for d in node.disks()]
        if len(chunks) == 3 and len(set(chunks)) == 1 and chunks[0] >= len(objects):
            break
        assert time.monotonic() < deadline, f"chunks per disk never matched: {chunks}"
        time.sleep(0.5)

    for disk in ("disk0", "disk1"):
        flipped = damage(node.data_dir / disk / "chunks.dat", used_bytes(objects), rng, count=600)
        assert flipped > 100
    read_back(conn, objects)
    conn.close()
    # The reads met the damage (a replica's checksum failed) and went on to another disk.
    assert b"corrupt" in node.log_path.read_bytes().lower(), "no damaged copy was read"
