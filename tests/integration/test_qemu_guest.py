"""A real QEMU guest (Debian's kernel and busybox, under TCG) uses a Strata volume as its
virtio disk. Before boot, qemu-io writes a marker over NBD; the guest reads it and echoes it
on its serial console, writes its own marker at an odd offset, syncs and powers off; then
qemu-img reads the whole volume back over NBD, and it must be byte-exact. guest.py builds
and boots the guest."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time

import pytest

import guest
from harness import MiB

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-io", "qemu-img")),
    reason="qemu-system-x86_64, qemu-io and qemu-img are needed (scripts/setup.sh installs them)",
)

VOLUME_BYTES = 32 * MiB
# Both markers sit at odd offsets and straddle a 4 KiB page boundary.
PREBOOT_OFFSET = 5 * MiB - 4093
GUEST_OFFSET = 9 * MiB - 11


def run(*cmd: str, timeout: float = 300) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def guest_images() -> guest.Images:
    """The guest's kernel and initramfs (built from Debian packages on a machine's first run)."""
    return guest.build()


def guest_disk(node, transport: str, volume: str) -> guest.Disk:
    """How the guest reaches `volume` of `node` over `transport`."""
    if transport == "nbd":
        return guest.nbd_disk(node.nbd_url(volume))
    # Every node serves each volume's vhost-user-blk socket in <data-dir>/vhost-user, from
    # the moment it applies the volume's record.
    socket_path = node.data_dir / "vhost-user" / f"{volume}.sock"
    deadline = time.monotonic() + 10
    while not socket_path.is_socket():
        assert time.monotonic() < deadline, f"no vhost-user-blk socket at {socket_path}"
        time.sleep(0.1)
    return guest.vhost_user_blk_disk(socket_path)


@pytest.mark.parametrize("transport", ["nbd", "vhost-user-blk"])
def test_guest_reads_and_writes_a_volume(single_node, guest_images, transport, tmp_path):
    volume = f"guest-{transport}"
    single_node.admin("volume", "create", volume, f"{VOLUME_BYTES // MiB}M")
    disk = guest_disk(single_node, transport, volume)
    url = single_node.nbd_url(volume)

    preboot = b"strata-preboot-" + secrets.token_hex(8).encode()
    (tmp_path / "preboot.bin").write_bytes(preboot)
    run("qemu-io", "-f", "raw", url,
        "-c", f"write -s {tmp_path / 'preboot.bin'} {PREBOOT_OFFSET} {len(preboot)}")  # fmt: skip

    # Arbitrary bytes, not just text: the guest gets them as hex on its command line.
    marker = b"strata-guest-" + os.urandom(19)
    console = guest.boot(
        guest_images,
        disk,
        [guest.read_step(PREBOOT_OFFSET, len(preboot)), guest.write_step(GUEST_OFFSET, marker)],
    )
    assert guest.console_disk_bytes(console) == VOLUME_BYTES, console
    assert guest.console_reads(console) == [(PREBOOT_OFFSET, preboot)], console

    back = tmp_path / "back.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back))
    data = back.read_bytes()
    assert len(data) == VOLUME_BYTES
    assert data[GUEST_OFFSET : GUEST_OFFSET + len(marker)] == marker
    assert data[PREBOOT_OFFSET : PREBOOT_OFFSET + len(preboot)] == preboot
    # Everything else is still zero: the guest wrote nothing but its marker.
    rest = bytearray(data)
    rest[GUEST_OFFSET : GUEST_OFFSET + len(marker)] = bytes(len(marker))
    rest[PREBOOT_OFFSET : PREBOOT_OFFSET + len(preboot)] = bytes(len(preboot))
    first = len(rest) - len(rest.lstrip(b"\0"))
    assert first == len(rest), f"unexpected non-zero byte at offset {first}"
