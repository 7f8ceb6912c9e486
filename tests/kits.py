"""Install kits for tests: a clone of this checkout to build one from, and install.sh and the installed CLI
run offline, each in a network namespace of its own with nothing but loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clone(tmp: Path, name: str = "source") -> Path:
    """A clone of this checkout's commit: what `anticloud kit build` sees on a staging machine."""
    target = tmp / name
    subprocess.run(["git", "clone", "--quiet", "--shared", str(ROOT), str(target)], check=True, timeout=120)
    return target


def commit_all(source: Path, message: str) -> None:
    subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet",
                    "-am", message], check=True, timeout=60)


def install(kit: Path, prefix: Path, *args: str, cpuinfo: Path | None = None) -> subprocess.CompletedProcess[str]:
    """install.sh, offline: in a network namespace of its own with nothing but loopback; with ``cpuinfo``
    bind-mounted over /proc/cpuinfo, as if on another CPU."""
    command = ["bash", str(kit / "install.sh"), "--prefix", str(prefix), *args]
    if cpuinfo is not None:
        command = ["sh", "-c", f'mount --bind "{cpuinfo}" /proc/cpuinfo && exec "$@"', "sh", *command]
    return subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--mount", *command],
                          capture_output=True, text=True, timeout=600)


def anticloud(prefix: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "--user", "--map-root-user", "--net", str(prefix / "bin" / "anticloud"),
                           "--home", str(home), *args], capture_output=True, text=True, timeout=120)
