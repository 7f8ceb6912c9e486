"""Installing a kit over an installed appliance: which way the versions go, and the ledger's record of it.

Invariants:

* `direction` is the one rule for "is this a downgrade": ``install.sh`` applies it before it
  installs anything (importing this module from the kit's verified wheel, so the rule is not
  restated in the script), and `record_install` applies it again to what it records, so the
  ledger never calls a downgrade anything else, and never records one that was not forced.
* A record names both sides by version and by the digest of the kit's signed manifest, which
  pins every file the kit installed; the side being installed is read from the receipt that
  ``install.sh`` wrote into the installation the command runs from, never from the caller.
* This module imports only the standard library at run time: ``install.sh`` runs it on a bare
  python3, before anything is installed.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anticloud.errors import InstallError

if TYPE_CHECKING:
    from ledger import LedgerWriter

UPGRADE, REINSTALL, DOWNGRADE = "upgrade", "reinstall", "downgrade"
RECEIPT = Path("share") / "anticloud" / "installed.json"  # inside the installation's prefix

# A subset of PEP 440 large enough for anticloud's own versions: release, pre-release, post, dev.
_VERSION = re.compile(r"(?P<release>\d+(?:\.\d+)*)(?:(?P<pre>a|b|rc)(?P<pre_n>\d+))?(?:\.post(?P<post>\d+))?"
                      r"(?:\.dev(?P<dev>\d+))?\Z")
_PRE = {"a": 0, "b": 1, "rc": 2}


def version_key(text: str) -> tuple[object, ...]:
    """A sort key for a version: 1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1 < 1.0.1. Pure."""
    match = _VERSION.match(text)
    if match is None:
        raise InstallError(f"cannot compare version {text!r}")
    release = tuple(int(part) for part in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    if match["pre"]:
        pre: tuple[int, int] = (_PRE[match["pre"]], int(match["pre_n"]))
    else:  # a dev release of a final version sorts before its pre-releases
        pre = (-1, 0) if match["dev"] and not match["post"] else (3, 0)
    post = int(match["post"]) if match["post"] else -1
    dev = int(match["dev"]) if match["dev"] else sys.maxsize
    return release, pre, post, dev


def direction(installed: str, new: str) -> str:
    """UPGRADE, REINSTALL (the same version) or DOWNGRADE, from the installed version to the new. Pure."""
    old_key, new_key = version_key(installed), version_key(new)
    return UPGRADE if new_key > old_key else REINSTALL if new_key == old_key else DOWNGRADE


@dataclass(frozen=True)
class Receipt:
    """What ``install.sh`` installed: the kit's version, its manifest's digest, signer and CPU build."""

    version: str
    manifest: str
    signed_by: str
    cpu_build: str

    @classmethod
    def read(cls, path: Path) -> Receipt:
        doc = json.loads(path.read_text())
        return cls(str(doc["version"]), str(doc["manifest"]), str(doc["signed_by"]), str(doc["cpu"]["build"]))


def installed_receipt() -> Receipt:
    """The receipt of the installation this Python runs from (``sys.prefix``)."""
    path = Path(sys.prefix) / RECEIPT
    try:
        return Receipt.read(path)
    except FileNotFoundError:
        raise InstallError(f"{sys.prefix} was not installed from a kit (no {RECEIPT})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"{path} is unreadable: {exc}") from None


def record_install(writer: LedgerWriter, installed: Receipt, previous: str | None, previous_manifest: str | None,
                   forced: bool) -> str:
    """Append ``appliance.install`` (a first install) or ``appliance.upgrade``; return its direction.

    ``previous`` is the version that was installed before, None for a first install.
    """
    if previous is None:
        writer.append("appliance.install", {"to": _side(installed)})
        return "install"
    way = direction(previous, installed.version)
    if way == DOWNGRADE and not forced:
        raise InstallError(f"{installed.version} is older than {previous}: a downgrade must be forced")
    writer.append("appliance.upgrade", {"direction": way, "forced": forced and way == DOWNGRADE,
                                        "from": {"version": previous, "manifest": previous_manifest},
                                        "to": _side(installed)})
    return way


def _side(receipt: Receipt) -> dict[str, str]:
    return {"version": receipt.version, "manifest": receipt.manifest, "signed_by": receipt.signed_by,
            "cpu_build": receipt.cpu_build}
