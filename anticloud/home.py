"""Where an appliance keeps its state: the home directory and the files inside it.

Invariant (the rule ssh applies with StrictModes): the appliance uses a home only if nobody
but its owner can change what it trusts. The home and every directory above it are owned by
the user running anticloud or by root and are not writable by group or others (a directory
above the home may be, if it is root's and sticky, like /tmp, where nobody can rename or
remove another's entry). The files the appliance trusts (the ledger, ``config.toml``,
``tokens.json``, ``trust.json``, ``keys/`` and the model store) obey the same rule, and the
private key is 0600. Anything else is refused with one line naming the path and the fix.
`check_home` runs wherever the command line opens a home; the stores that are re-read while
serving (`tokens.load`, `TrustStore.load`) check the very descriptor they read with
`check_open_file`, so a file swapped in later is refused too.

Inside ``--isolate``'s user namespace, owners the namespace does not map appear as the
overflow uid. The directories *above* the home are then taken as the launcher checked them,
from outside, just before it started the engine; the home and its files must still show as
owned by the user, who is mapped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from anticloud.errors import UnsafeHomeError

HOME_ENV = "ANTICLOUD_HOME"

# Files and directories whose contents the appliance trusts, relative to the home.
TRUSTED = ("ledger.jsonl", "config.toml", "tokens.json", "trust.json", "keys", "keys/appliance.key", "models",
           "appliance.pub", "anticloud.pid", "engine.lock", "seal.state", "keyring", "keyring/operator.pub",
           "keyring/operator.key", "keyring/groups", "content")
PRIVATE = ("keys/appliance.key", "seal.state", "keyring/operator.key")


@dataclass(frozen=True, slots=True)
class Home:
    """The appliance home. Every path the appliance writes is derived from ``root``."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def config(self) -> Path:
        """The configuration's overrides (TOML); the ledger holds every accepted version."""
        return self.root / "config.toml"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.json"

    @property
    def trust(self) -> Path:
        return self.root / "trust.json"

    @property
    def trust_lock(self) -> Path:
        return self.root / "trust.lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def socket(self) -> Path:
        """The engine's default unix socket."""
        return self.root / "anticloud.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "anticloud.pid"

    @property
    def listening(self) -> Path:
        """Where a running server listens (`anticloud status` reads it): ``{"pid", "unix", "tcp"}``."""
        return self.root / "listening.json"

    @property
    def engine_lock(self) -> Path:
        return self.root / "engine.lock"

    @property
    def seal_state(self) -> Path:
        """The open sealing epoch's key (0600): the only sealing secret the appliance holds."""
        return self.root / "seal.state"

    @property
    def cluster(self) -> Path:
        """The cluster link's TLS key and certificate (`anticloud.cluster.tls`), and ``peers/``,
        the peers' certificates exchanged by hand: 0700, the key 0600."""
        return self.root / "cluster"

    @property
    def keyring(self) -> Path:
        """Sealed content's keys (`anticloud.vault.keyring`): 0700, every file 0600."""
        return self.root / "keyring"

    @property
    def content_public(self) -> Path:
        """The operator's public content key: a home seals only once it has one."""
        return self.keyring / "operator.pub"

    @property
    def content(self) -> Path:
        """The content store: sealed prompts and outputs, one file per field."""
        return self.root / "content"

    @property
    def identity_key(self) -> Path:
        return self.root / "keys" / "appliance.key"

    @property
    def identity_pub(self) -> Path:
        """The public key auditors take away (PEM)."""
        return self.root / "appliance.pub"

    @classmethod
    def resolve(cls, option: str | os.PathLike[str] | None = None) -> Home:
        """``--home`` first, then ``$ANTICLOUD_HOME``, then ``~/.anticloud``."""
        chosen = option or os.environ.get(HOME_ENV) or Path.home() / ".anticloud"
        return cls(Path(chosen).expanduser().absolute())


def problem(path: Path, st: os.stat_result, me: int, *, above: bool = False, private: bool = False,
            unmapped: int | None = None) -> str | None:
    """Why ``path`` (with status ``st``) must not be trusted by uid ``me``, or None. Pure.

    ``above``: a directory above the home, which may be root's sticky /tmp, and whose owner
    may be ``unmapped`` (the overflow uid inside a user namespace).
    """
    mode = stat.S_IMODE(st.st_mode)
    owner_ok = st.st_uid in (me, 0) or (above and unmapped is not None and st.st_uid == unmapped)
    if not owner_ok:
        return (f"{path} is owned by uid {st.st_uid}, not by you (uid {me}) or root; refusing to use it "
                f"(fix: chown {me} {path})")
    root_owned = st.st_uid == 0 or (unmapped is not None and st.st_uid == unmapped)
    sticky_root_dir = above and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and root_owned
    if mode & 0o022 and not sticky_root_dir:
        return (f"{path} is writable by group or others (mode {mode:04o}); refusing to use it "
                f"(fix: chmod go-w {path})")
    if private and mode & 0o077:
        return f"{path} has mode {mode:04o}; a private key must be 0600 (fix: chmod 600 {path})"
    return None


def _overflow_uid_if_namespaced() -> int | None:
    """The overflow uid, when this process is in a user namespace other than the initial one."""
    try:
        uid_map = Path("/proc/self/uid_map").read_text().split()
        if uid_map == ["0", "0", "4294967295"]:
            return None
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return None


def check_home(home: Home) -> None:
    """Refuse (UnsafeHomeError, one line) a home that someone other than its owner could change."""
    me, unmapped = os.geteuid(), _overflow_uid_if_namespaced()
    root = home.root
    for above in reversed(root.parents):
        _check(above, me, above=True, unmapped=unmapped)
    _check(root, me)
    for name in TRUSTED:
        _check(root / name, me, private=name in PRIVATE)


def _check(path: Path, me: int, *, above: bool = False, private: bool = False, unmapped: int | None = None) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if (found := problem(path, st, me, above=above, private=private, unmapped=unmapped)) is not None:
        raise UnsafeHomeError(found)


def check_open_file(path: Path, fd: int) -> None:
    """Refuse a file, already open as ``fd``, that someone other than its owner could have written.

    Checking the descriptor, not the name, leaves no gap between the check and the read.
    """
    if (found := problem(path, os.fstat(fd), os.geteuid())) is not None:
        raise UnsafeHomeError(found)


def read_trusted(path: Path) -> bytes:
    """The bytes of a file the appliance trusts, refused (UnsafeHomeError) if others could write it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        check_open_file(path, fd)
        return handle.read()
