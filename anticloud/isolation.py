"""Running the engine in a network namespace of its own (Linux), on a connected machine.

``--isolate`` runs the same command again under util-linux ``unshare --user --map-root-user
--net``: a fresh network namespace holding only a loopback interface, which is brought up
before anything else. The air-gap guard then passes honestly, because there is no route
anywhere. The file system is shared, so the ledger, the store and the server's unix socket
in the appliance home are the same as outside.

Why the launcher stays, outside, instead of exec'ing ``unshare``: the kernel translates a
socket peer's credentials into the user namespace of whoever reads them, and the new
namespace maps only the operator. Inside it, every other person reads as uid 65534, so the
engine alone cannot tell who is asking (anticloud.peercred). Mapping a full uid range
instead would work only when the operator is root, and would hand the namespace's root
every uid on the machine. So the launcher, still in the initial user namespace, spawns the
namespaced engine with one end of a socketpair and becomes its credential oracle: for each
descriptor the engine passes it (SCM_RIGHTS), it answers SO_PEERCRED as read outside, which
is the real uid. Without an answer the engine gives the connection no uid identity (fail
closed). The launcher forwards SIGTERM and SIGINT to the engine and exits with its status.

The engine, not the launcher, takes the home's engine lock and writes the pid file (same pid
namespace, so its pid is the real one): `anticloud stop` signals the process that records
``engine.start`` and ``engine.stop``. The engine runs in a process group of its own, so a
Ctrl-C at the terminal reaches it once, through the launcher. An engine that talks with the
person at the terminal (`anticloud chat`) makes its group the terminal's foreground group
(`take_terminal`), so it may read the terminal and a Ctrl-C reaches it directly; the launcher
takes the terminal back when it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from anticloud.airgap import bring_loopback_up
from anticloud.errors import EngineRefused
from anticloud.peercred import CredentialOracle, Credentials, LocalCredentials, answer_oracle_questions

NAMESPACE_ENV = "ANTICLOUD_NAMESPACE"
ORACLE_ENV = "ANTICLOUD_CREDENTIAL_FD"
HANDED_ENV = "ANTICLOUD_LISTEN_FDS"  # read by anticloud.api.listen.handed


def in_namespace() -> bool:
    return os.environ.get(NAMESPACE_ENV) == "1"


def run_isolated(listening: Sequence[socket.socket] = ()) -> NoReturn:
    """Run this command inside a new user and network namespace, serve it credentials, exit with its status.

    ``listening``: sockets bound here, in the host's network namespace, handed to the engine
    (anticloud.api.listen.HANDED_ENV): they stay in this namespace, so through them the engine
    accepts connections from the host's loopback and can open none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EngineRefused("--isolate needs util-linux `unshare`, which is not installed")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [unshare, "--user", "--map-root-user", "--net", "--", sys.executable, "-m", "anticloud", *sys.argv[1:]]
    handed = [s.fileno() for s in listening]
    env = {**os.environ, NAMESPACE_ENV: "1", ORACLE_ENV: str(theirs.fileno()), HANDED_ENV: ",".join(map(str, handed))}
    sys.stdout.flush()
    sys.stderr.flush()
    engine = subprocess.Popen(argv, env=env, pass_fds=(theirs.fileno(), *handed), process_group=0)
    theirs.close()
    for sock in listening:  # the engine's now: the launcher answers no connection
        sock.close()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: engine.send_signal(received))
    threading.Thread(target=answer_oracle_questions, args=(ours,), name="credential-oracle", daemon=True).start()
    status = engine.wait()
    _foreground(os.getpgrp())
    sys.exit(status if status >= 0 else 128 - status)


def take_terminal() -> None:
    """Make this process's group the foreground group of the terminal on standard input, if there
    is one: the launcher started the engine in a group of its own, which may not read it."""
    _foreground(os.getpgrp())


def _foreground(group: int) -> None:
    try:
        if not os.isatty(0) or os.tcgetpgrp(0) == group:
            return
        # A background group asking for the terminal is sent SIGTTOU, which would stop it.
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, group)
        finally:
            signal.signal(signal.SIGTTOU, previous)
    except OSError:  # not our controlling terminal: nothing to hand over
        pass


def credentials() -> Credentials:
    """How this engine learns a peer's real uid: the launcher's oracle under --isolate, else locally."""
    fd = os.environ.pop(ORACLE_ENV, None)
    if fd is None or not fd.isdigit():
        return LocalCredentials()
    os.set_inheritable(int(fd), False)  # the engine's own children get no line to the oracle
    return CredentialOracle(socket.socket(fileno=int(fd)))


def enter() -> bool:
    """In the namespace, bring loopback up; return whether we are in one."""
    if in_namespace():
        bring_loopback_up()
        return True
    return False
