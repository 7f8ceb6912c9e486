"""Where an appliance keeps its state: the home directory and the files inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "ANTICLOUD_HOME"


@dataclass(frozen=True, slots=True)
class Home:
    """The appliance home. Every path the appliance writes is derived from ``root``."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

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
