"""A small QEMU guest for tests that need a real virtio-blk client: Debian's kernel and a
busybox initramfs, booted under TCG, with one disk (NBD or vhost-user-blk) seen as /dev/vda.

Images are built from Debian packages (`apt-get download`) and cached under
$STRATA_GUEST_CACHE (default ~/.cache/strata-guest), keyed by package versions and by the
/init below, so they are built once per machine:

- the kernel: the ELF vmlinux inside the bzImage of the package `linux-image-amd64`
  depends on (linux-image-6.1.0-*-amd64 on bookworm); QEMU boots it through PVH, which is
  about twice as fast under TCG as booting the bzImage;
- the initramfs: busybox-static, the virtio modules of the same kernel package, and /init.

/init is generic: it does what the kernel command line says, in order, then powers off.

    strata.read=OFFSET:LENGTH   prints `STRATA-READ OFFSET HEX`: LENGTH bytes of /dev/vda
    strata.write=OFFSET:HEX     writes the bytes HEX at OFFSET of /dev/vda (then fsync),
                                prints `STRATA-WROTE OFFSET LENGTH`

It first prints `STRATA-DISK BYTES` (the size of /dev/vda), after all steps `sync`s and
prints `STRATA-DONE`; a failed step prints `STRATA-FAILED WHY` and powers off at once.

From the command line (stdlib only, any python3):

    python3 tests/integration/guest.py build
        builds what is missing and prints `kernel=PATH` and `initramfs=PATH`
    python3 tests/integration/guest.py boot (--nbd URL | --vhost-user-blk SOCKET)
            [--read OFFSET:LENGTH | --write OFFSET:HEX]...
        boots the guest with that disk, runs the steps in the order given and prints its
        serial console
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

CACHE_DIR = Path(os.environ.get("STRATA_GUEST_CACHE", Path.home() / ".cache" / "strata-guest"))
# Guest RAM in MiB; a vhost-user disk shares all of it with the backend through a memfd.
MEMORY_MIB = 256
# A boot takes 8-20 s under TCG on an idle machine; this leaves room for a loaded one.
BOOT_TIMEOUT = 180.0
# The virtio modules /init loads, in dependency order (virtio_blk serves both disk kinds).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
)
# x86 kernels accept at most 2048 bytes of command line.
MAX_CMDLINE = 2047

INIT = r"""#!/bin/busybox sh
# /init of the Strata test guest: runs the strata.* steps of the kernel command line.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
set -o pipefail

fail() {
    echo "STRATA-FAILED $*"
    poweroff -f
}

for m in MODULES; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
tries=0
while [ ! -b /dev/vda ]; do
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || fail "no /dev/vda after 20 s"
    sleep 0.1
done
echo "STRATA-DISK $(blockdev --getsize64 /dev/vda)"

for arg in $(cat /proc/cmdline); do
    case "$arg" in
    strata.read=*)
        spec="${arg#strata.read=}"
        off="${spec%%:*}"
        len="${spec#*:}"
        hex="$(dd if=/dev/vda bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes \
            2>/dev/null | hexdump -v -e '/1 "%02x"')" || fail "read $spec"
        echo "STRATA-READ $off $hex"
        ;;
    strata.write=*)
        spec="${arg#strata.write=}"
        off="${spec%%:*}"
        hex="${spec#*:}"
        printf "$(echo "$hex" | sed 's/../\\x&/g')" |
            dd of=/dev/vda bs=65536 seek="$off" oflag=seek_bytes conv=notrunc,fsync 2>/dev/null ||
            fail "write $off"
        echo "STRATA-WROTE $off $((${#hex} / 2))"
        ;;
    esac
done
sync
echo STRATA-DONE
poweroff -f
""".replace("MODULES", " ".join(MODULES))


class GuestError(AssertionError):
    """The guest images could not be built, or a boot did not reach STRATA-DONE.
    `console` holds the serial console output of a failed boot ('' for build errors)."""

    def __init__(self, message: str, console: str = ""):
        super().__init__(message)
        self.console = console


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    """A bootable guest: an ELF kernel for PVH boot and its initramfs."""

    kernel: Path
    initramfs: Path


def _run(*cmd: str, cwd: Path | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise GuestError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def _apt_field(package: str, field: str) -> str:
    """A field of the candidate version of `package` in the local apt lists."""
    out = _run("apt-cache", "show", "--no-all-versions", package)
    for line in out.splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise GuestError(f"apt-cache show {package} has no {field} (run apt-get update?)")


def _kernel_package() -> tuple[str, str]:
    """(name, version) of the kernel image package `linux-image-amd64` depends on."""
    depends = _apt_field("linux-image-amd64", "Depends")
    m = re.search(r"(linux-image-[0-9][^\s,]*-amd64) \(= ([^)\s]+)\)", depends)
    if not m:
        raise GuestError(f"no kernel image in linux-image-amd64's Depends: {depends}")
    return m.group(1), m.group(2)


def _safe(version: str) -> str:
    """A Debian version as a file-name part (an epoch's ':' is not welcome in paths)."""
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def _download(package: str, version: str, into: Path) -> Path:
    """Downloads exactly `package`=`version` into the empty directory `into`; returns the .deb."""
    _run("apt-get", "download", "-q", f"{package}={version}", cwd=into)
    debs = list(into.glob("*.deb"))
    if len(debs) != 1:
        raise GuestError(f"apt-get download {package}={version} left {debs} in {into}")
    return debs[0]


def _members(deb: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The regular files of a .deb's data archive whose path `wanted(path)` accepts, read in
    one streaming pass (the kernel package unpacks to hundreds of MB; nothing else is kept)."""
    found: dict[str, bytes] = {}
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    found[member.name] = tar.extractfile(member).read()
    finally:
        p.stdout.close()
        if p.wait() != 0:
            raise GuestError(f"dpkg-deb --fsys-tarfile {deb} exited {p.returncode}")
    return found


def _vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The ELF kernel inside an xz-compressed bzImage (what QEMU's PVH boot loads)."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise GuestError("no xz stream in the bzImage")
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    if not elf.startswith(b"\x7fELF"):
        raise GuestError("the bzImage's xz stream is not an ELF kernel")
    return elf


class _Cpio:
    """Writes a `newc` cpio archive, the format the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        self.ino += 1
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(name) + 1, 0)
        self.buf.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        self.buf.write(name.encode() + b"\0")
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _initramfs(busybox: bytes, modules: dict[str, bytes]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
        cpio.directory(d)
    # The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.file("init", INIT.encode(), 0o755)
    for name, data in modules.items():
        cpio.file(f"lib/modules/{name}.ko", data)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _publish(files: dict[str, bytes], final: Path) -> None:
    """Writes `files` into a fresh directory and renames it to `final` in one step, so a
    cache entry is either complete or absent (also when two builds race)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build() -> Images:
    """The guest images for the current kernel and busybox-static packages, built (and
    cached) if missing. Needs apt-get and dpkg-deb, and the network on a first build."""
    kpkg, kver = _kernel_package()
    bver = _apt_field("busybox-static", "Version")
    init_id = hashlib.sha256(INIT.encode()).hexdigest()[:12]
    kernel_dir = CACHE_DIR / f"{kpkg}_{_safe(kver)}"
    initramfs_dir = CACHE_DIR / f"initramfs_{kpkg}_{_safe(kver)}_busybox_{_safe(bver)}_{init_id}"
    images = Images(kernel=kernel_dir / "vmlinux", initramfs=initramfs_dir / "initramfs.cpio.gz")
    if images.kernel.is_file() and images.initramfs.is_file():
        return images
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=CACHE_DIR) as tmp:
        if not images.kernel.is_file():
            (Path(tmp) / "kernel").mkdir()
            deb = _download(kpkg, kver, Path(tmp) / "kernel")
            wanted = {f"{m}.ko" for m in MODULES}
            files = _members(
                deb,
                lambda p: p.startswith("./boot/vmlinuz-")
                or ("/kernel/drivers/" in p and p.rsplit("/", 1)[-1] in wanted),
            )
            deb.unlink()
            bzimages = [d for p, d in files.items() if p.startswith("./boot/vmlinuz-")]
            modules = {p.rsplit("/", 1)[-1]: d for p, d in files.items() if p.endswith(".ko")}
            if len(bzimages) != 1 or set(modules) != wanted:
                raise GuestError(f"{kpkg} lacks the bzImage or some of {sorted(wanted)}")
            _publish({"vmlinux": _vmlinux_from_bzimage(bzimages[0]), **modules}, kernel_dir)
        (Path(tmp) / "busybox").mkdir()
        deb = _download("busybox-static", bver, Path(tmp) / "busybox")
        busybox = _members(deb, lambda p: p == "./bin/busybox")["./bin/busybox"]
        modules = {m: (kernel_dir / f"{m}.ko").read_bytes() for m in MODULES}
        _publish({"initramfs.cpio.gz": _initramfs(busybox, modules)}, initramfs_dir)
    return images


# --------------------------------------------------------------------------------------------
# Disks and steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """QEMU arguments that give the guest its one disk, /dev/vda. `shared_memory`: the guest
    RAM must be a shared memfd, as a vhost-user backend maps it."""

    args: tuple[str, ...]
    shared_memory: bool = False


def nbd_disk(url: str) -> Disk:
    """A virtio-blk disk backed by QEMU's NBD client, e.g. nbd://127.0.0.1:10809/vol."""
    return Disk(("-drive", f"file={url},format=raw,if=virtio,cache=none"))


def vhost_user_blk_disk(socket_path: Path | str) -> Disk:
    """A vhost-user-blk disk served on the unix socket `socket_path` (QEMU connects to it)."""
    return Disk(
        (
            "-chardev", f"socket,id=disk0,path={socket_path}",
            "-device", "vhost-user-blk-pci,chardev=disk0",
        ),
        shared_memory=True,
    )  # fmt: skip


def read_step(offset: int, length: int) -> str:
    """The kernel parameter that makes /init print `length` bytes at `offset` of the disk."""
    return f"strata.read={offset}:{length}"


def write_step(offset: int, data: bytes) -> str:
    """The kernel parameter that makes /init write `data` at `offset` of the disk."""
    if not data:
        raise ValueError("nothing to write")
    return f"strata.write={offset}:{data.hex()}"


def console_reads(console: str) -> list[tuple[int, bytes]]:
    """The (offset, bytes) of every `strata.read` step, in order, from a boot's console."""
    return [
        (int(m.group(1)), bytes.fromhex(m.group(2)))
        for m in re.finditer(r"^STRATA-READ (\d+) ([0-9a-f]*)\r?$", console, re.M)
    ]


def console_disk_bytes(console: str) -> int:
    """The size of /dev/vda as the guest saw it."""
    m = re.search(r"^STRATA-DISK (\d+)\r?$", console, re.M)
    if not m:
        raise GuestError("the guest did not report its disk size", console)
    return int(m.group(1))


# --------------------------------------------------------------------------------------------
# Boot
# --------------------------------------------------------------------------------------------


def _pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL`: QEMU dies with the thread that started it (as the nodes
    do in harness.py), so no guest outlives a test run that was itself killed."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def qemu_command(images: Images, disk: Disk, steps: Sequence[str] = ()) -> list[str]:
    """The QEMU command line of one boot: TCG on a `pc` machine, no network, serial console
    on stdout, and the guest's power-off (or reboot, or panic) ends QEMU."""
    cmdline = " ".join(["console=ttyS0", "panic=-1", "quiet", *steps])
    if len(cmdline) > MAX_CMDLINE:
        raise ValueError(f"kernel command line of {len(cmdline)} bytes exceeds {MAX_CMDLINE}")
    machine = ["-M", "pc"]
    if disk.shared_memory:
        machine = [
            "-M", "pc,memory-backend=mem",
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on",
        ]  # fmt: skip
    return [
        "qemu-system-x86_64",
        "-accel", "tcg", *machine, "-m", str(MEMORY_MIB), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
        "-serial", "stdio", "-no-reboot",
        "-kernel", str(images.kernel), "-initrd", str(images.initramfs), "-append", cmdline,
        *disk.args,
    ]  # fmt: skip


def boot(
    images: Images, disk: Disk, steps: Sequence[str] = (), timeout: float = BOOT_TIMEOUT
) -> str:
    """Boots the guest with `disk`, runs `steps` (see read_step, write_step) and returns the
    serial console output once the guest has powered off. Raises GuestError, with the
    console so far, if the guest does not reach STRATA-DONE within `timeout` seconds; QEMU
    is killed by PID whenever it is still running on the way out."""
    proc = subprocess.Popen(
        [*_pdeathsig_prefix(), *qemu_command(images, disk, steps)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            console = out.decode("utf-8", "replace")
            raise GuestError(f"guest still running after {timeout:.0f}s:\n{console}", console)
    finally:
        _kill(proc)
    console = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if proc.returncode != 0 or not re.search(r"^STRATA-DONE\r?$", console, re.M):
        raise GuestError(
            f"guest did not finish (QEMU exit code {proc.returncode}):\n{stderr}\n{console}",
            console,
        )
    return console


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL by PID and reap; no-op once the process has exited (and been reaped)."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _read_arg(text: str) -> str:
    off, sep, length = text.partition(":")
    if not (sep and off.isdigit() and length.isdigit()):
        raise argparse.ArgumentTypeError(f"expected OFFSET:LENGTH, got {text!r}")
    return read_step(int(off), int(length))


def _write_arg(text: str) -> str:
    off, sep, data = text.partition(":")
    if not (sep and off.isdigit() and re.fullmatch(r"(?:[0-9a-fA-F]{2})+", data)):
        raise argparse.ArgumentTypeError(f"expected OFFSET:HEX, got {text!r}")
    return write_step(int(off), bytes.fromhex(data))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the images if missing; print their paths")
    b = sub.add_parser("boot", help="boot the guest with one disk; print its console")
    kind = b.add_mutually_exclusive_group(required=True)
    kind.add_argument("--nbd", metavar="URL", help="e.g. nbd://127.0.0.1:10809/vol")
    kind.add_argument("--vhost-user-blk", metavar="SOCKET", help="unix socket of a backend")
    b.add_argument("--read", metavar="OFFSET:LENGTH", type=_read_arg, action="append",
                   dest="steps", help="print LENGTH bytes at OFFSET")  # fmt: skip
    b.add_argument("--write", metavar="OFFSET:HEX", type=_write_arg, action="append",
                   dest="steps", help="write the bytes HEX at OFFSET")  # fmt: skip
    b.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    args = parser.parse_args(argv)

    images = build()
    if args.command == "build":
        print(f"kernel={images.kernel}")
        print(f"initramfs={images.initramfs}")
        return 0
    disk = nbd_disk(args.nbd) if args.nbd else vhost_user_blk_disk(args.vhost_user_blk)
    try:
        print(boot(images, disk, args.steps or (), timeout=args.timeout), end="")
    except GuestError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
