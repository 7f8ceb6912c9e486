"""Running the engine in a network namespace of its own (Linux), on a connected machine.

``--isolate`` re-executes the same command under util-linux ``unshare --user --map-root-user
--net``: a fresh network namespace holding only a loopback interface, which is brought up
before anything else. The air-gap guard then passes honestly, because there is no route
anywhere. The file system is shared, so the ledger, the store and the server's unix socket
in the appliance home are the same as outside.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import NoReturn

from anticloud.airgap import bring_loopback_up
from anticloud.errors import EngineRefused

NAMESPACE_ENV = "ANTICLOUD_NAMESPACE"


def in_namespace() -> bool:
    return os.environ.get(NAMESPACE_ENV) == "1"


def reexec_isolated() -> NoReturn:
    """Replace this process by the same command inside a new user and network namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EngineRefused("--isolate needs util-linux `unshare`, which is not installed")
    argv = [unshare, "--user", "--map-root-user", "--net", "--", sys.executable, "-m", "anticloud", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(unshare, argv, {**os.environ, NAMESPACE_ENV: "1"})  # noqa: S606 - a fixed argv, no shell


def enter() -> bool:
    """In the namespace, bring loopback up; return whether we are in one."""
    if in_namespace():
        bring_loopback_up()
        return True
    return False
