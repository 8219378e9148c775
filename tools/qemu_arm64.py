"""Running linux-aarch64 binaries here: Debian's qemu-user with the cross sysroot, inside a private mount
namespace that shows ORT's cpuinfo a one-CPU ``/sys/devices/system/cpu`` (it crashes on the host's
topology otherwise; needs root, as in CI). Shared by ``tests/kernel/test_qemu_arm64.py`` and
``tools/bench_arm_insn.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's aarch64 libc/libstdc++ (g++-aarch64-linux-gnu)
QEMU = "qemu-aarch64"
# Fake a one-CPU sysfs in a private mount namespace, then exec the command ("$@" after the mount point).
FAKE_CPU_SCRIPT = (
    'set -e; d="$1"; shift; mount -t tmpfs none "$d"; printf "0\\n" >"$d/possible"; '
    'printf "0\\n" >"$d/present"; mount --bind "$d" /sys/devices/system/cpu; exec "$@"'
)
#: (tool, Debian package) every qemu arm64 run needs: the emulator, the cross compiler, unshare, cmake.
BASE_TOOLS = (
    (QEMU, "qemu-user"),
    ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    ("unshare", "util-linux"),
    ("cmake", "cmake"),
)


def missing_requirement(extra_tools: tuple[tuple[str, str], ...] = ()) -> str | None:
    """Why arm64 binaries cannot run under qemu here (OS, root, a tool, the sysroot), or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (qemu-user, mount namespaces)"
    if os.geteuid() != 0:
        return "needs root: a private mount namespace hides the host CPU topology from ORT's cpuinfo"
    for tool, package in (*BASE_TOOLS, *extra_tools):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    if not Path(SYSROOT, "lib").is_dir():
        return f"{SYSROOT} missing (Debian package g++-aarch64-linux-gnu)"
    return None
