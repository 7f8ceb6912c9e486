"""Sealed content: prompts and outputs encrypted beside the ledger, readable by the operator's
key holder, erasable by destroying keys (docs/ledger-format.md §15).

Layers, each depending only on those above it:

* ``crypto``   -- sealing a field and wrapping keys (pure: bytes in, bytes out);
* ``keyring``  -- the operator's public key, group keys and wrapped data keys on disk;
* ``store``    -- the content files, one per sealed field;
* ``sealer``   -- what the engine does per inference: wrap a data key, seal, store, durably;
* ``reading``  -- opening a record's content with the operator's key, every commitment checked;
* ``erasure``  -- scopes, legal holds and retention, and destroying keys once recorded.
"""

from anticloud.vault.crypto import Sealed, key_commitment, open_content, seal
from anticloud.vault.keyring import Entry, Group, Keyring
from anticloud.vault.sealer import LazySealer, Sealer
from anticloud.vault.store import ContentStore

__all__ = ["ContentStore", "Entry", "Group", "Keyring", "LazySealer", "Sealed", "Sealer", "key_commitment",
           "open_content", "seal"]
