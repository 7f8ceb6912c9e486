"""The appliance's configuration: ``HOME/config.toml`` over the defaults of policies/default.toml.

A value's type must match its default's, enumerations must hold one of their values, and
unknown sections or keys are refused, so a misspelt setting fails loudly instead of silently
leaving the default in force. Per-model compute settings live in ``[models.NAME]`` tables
whose keys are those of ``[compute]``.

The digest of a configuration is the SHA3-256 of the canonical JSON of the whole effective
document. The ledger holds every accepted configuration in full (``config.init``,
``config.change``, ``config.accept``), so an edit made around the appliance shows up as a
digest that no record accepted (``config.drift``).

A running engine takes over each recorded configuration from the ledger, never from the
file, before its next operation; only the settings in `AT_NEXT_START` wait for a restart,
and their ``config.change`` says ``"takes_effect": "next start"``.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from anticloud.cluster import settings as cluster_settings
from anticloud.durations import seconds
from anticloud.errors import ConfigError
from anticloud.fsutil import atomic_write
from anticloud.gguf import GgufLimits
from anticloud.home import Home
from ledger import SHA3_TAG, LedgerWriter, canonical_bytes, records_backward, sha3_tag

# Kept identical to policies/default.toml by a test.
DEFAULTS: dict[str, dict[str, Any]] = {
    "trust": {"min_signatures": 1},
    "import": {"max_file_bytes": 64 << 30},
    "gguf": asdict(GgufLimits()),  # one definition of the limits: the dataclass's defaults
    "chat_templates": {"require_pinned": True, "pinned": []},
    "airgap": {"mode": "enforce"},
    "engine": {"name": "llama_cpp", "keep_alive": 300, "max_loaded": 1, "queue_size": 4},
    "compute": {"n_ctx": 2048, "threads": 0, "gpu_layers": 0, "parallel": 4, "repack": True},
    # "hash" is the default of a home made before sealing existed; `anticloud init` makes new
    # homes "sealed" (in their config.toml), so an upgrade changes no existing home's policy.
    "inference": {"record_content": "hash", "default_model": "gemma3-270m", "content_retention": 0},
    "api": {"tokens_on_unix_socket": False, "max_body_bytes": 1 << 20, "stall_timeout": 30,
            "session_idle_timeout": 900},
    # An epoch closes at least this often (seconds): an insider who takes the appliance can
    # rewrite at most the records since the last seal, so a minute bounds that to a minute.
    "ledger": {"seal_interval": 60},
    # The wall clock may drift from the steady clock by this many seconds between two checks of a
    # running engine before the difference is recorded as a jump (clock.jump).
    "clock": {"jump_threshold": 2},
    # Empty: no cluster, and the air gap allows no interface at all (docs/cluster.md).
    "cluster": cluster_settings.DEFAULTS,
}
MAX_PARALLEL = 64  # compute.parallel: sequences one llama.cpp context decodes together
CHOICES = {("airgap", "mode"): ("enforce", "warn"), ("inference", "record_content"): ("hash", "plaintext", "sealed")}
CONFIG_KINDS = ("config.init", "config.change", "config.accept", "config.upgrade")
ENGINE_KINDS = ("engine.start", "engine.stop")
ACCEPTED = "accepted_config"  # in engine.start and engine.stop: the digest of the accepted configuration in force
# Settings a running engine cannot take over: it was built with them. Every other setting is in
# force for the first record after its config.change (see anticloud.governor).
AT_NEXT_START = frozenset({("engine", "name"), ("ledger", "seal_interval"),
                           *(("cluster", key) for key in cluster_settings.DEFAULTS)})
# Settings in seconds, which `config set` also takes as durations ("5m", "1h", "-1" for keep_alive).
DURATIONS = frozenset({("engine", "keep_alive"), ("api", "stall_timeout"), ("ledger", "seal_interval"),
                       ("clock", "jump_threshold"), ("inference", "content_retention"),
                       ("api", "session_idle_timeout")})


@dataclass(frozen=True, slots=True)
class Policy:
    min_signatures: int
    max_file_bytes: int
    gguf: GgufLimits
    require_pinned_templates: bool
    pinned_templates: frozenset[str]


@dataclass(frozen=True, slots=True)
class Compute:
    n_ctx: int
    threads: int
    gpu_layers: int
    parallel: int
    repack: bool


@dataclass(frozen=True)
class Config:
    """The effective configuration: every section, merged and checked."""

    doc: dict[str, Any]

    @property
    def policy(self) -> Policy:
        d = self.doc
        return Policy(d["trust"]["min_signatures"], d["import"]["max_file_bytes"], GgufLimits(**d["gguf"]),
                      d["chat_templates"]["require_pinned"], frozenset(d["chat_templates"]["pinned"]))

    def compute_for(self, model: str) -> Compute:
        return Compute(**{**self.doc["compute"], **self.doc.get("models", {}).get(model, {})})

    def get(self, section: str, key: str) -> Any:
        return self.doc[section][key]

    def digest(self) -> str:
        return sha3_tag(canonical_bytes(self.doc))



def load_config(home: Home) -> Config:
    path = home.config
    try:
        overrides = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config(merge(overrides, str(path)))


def load_policy(home: Home) -> Policy:
    return load_config(home).policy


def merge(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    merged: dict[str, Any] = {section: dict(values) for section, values in DEFAULTS.items()}
    for section, values in overrides.items():
        if section == "models" and isinstance(values, dict):
            merged["models"] = {name: _model_table(name, table, where) for name, table in values.items()}
            continue
        if section not in DEFAULTS or not isinstance(values, dict):
            raise ConfigError(f"{where}: unknown section [{section}]")
        for key, value in values.items():
            merged[section][key] = _checked(section, key, value, where)
    _check_rules(merged, where)
    return merged


def _checked(section: str, key: str, value: Any, where: str) -> Any:
    if key not in DEFAULTS[section]:
        raise ConfigError(f"{where}: unknown setting {section}.{key}")
    default = DEFAULTS[section][key]
    if type(value) is not type(default):
        raise ConfigError(f"{where}: {section}.{key} must be a {type(default).__name__}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: {section}.{key} must be one of {', '.join(choices)}")
    return value


def _model_table(name: str, table: Any, where: str) -> dict[str, int]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [models.{name}] must be a table")
    return {key: _checked("compute", key, value, where) for key, value in table.items()}


def _check_rules(doc: dict[str, Any], where: str) -> None:
    if doc["trust"]["min_signatures"] < 1:
        raise ConfigError(f"{where}: trust.min_signatures must be at least 1")
    pinned = doc["chat_templates"]["pinned"]
    if not all(isinstance(h, str) and h.startswith(SHA3_TAG) and len(h) == len(SHA3_TAG) + 64 for h in pinned):
        raise ConfigError(f"{where}: chat_templates.pinned must list hashes written sha3-256:<64 hex digits>")
    for section, key in (("engine", "max_loaded"), ("engine", "queue_size"), ("compute", "n_ctx"),
                         ("compute", "parallel"), ("api", "stall_timeout"), ("api", "session_idle_timeout"),
                         ("ledger", "seal_interval"),
                         ("clock", "jump_threshold")):
        if doc[section][key] < 1:
            raise ConfigError(f"{where}: {section}.{key} must be at least 1")
    if any(t.get("parallel", 1) > MAX_PARALLEL for t in (doc["compute"], *doc.get("models", {}).values())):
        raise ConfigError(f"{where}: compute.parallel must be at most {MAX_PARALLEL}")
    if doc["inference"]["content_retention"] < 0:
        raise ConfigError(f"{where}: inference.content_retention must be 0 (keep) or a duration such as 365d")
    if doc["ledger"]["seal_interval"] > 300:  # an insider's window is one interval: keep it short
        raise ConfigError(f"{where}: ledger.seal_interval must be at most 300 (seconds)")
    cluster_settings.check(doc["cluster"], where)
    if doc["cluster"]["interface"] and doc["airgap"]["mode"] != "enforce":
        # The cable is the guard's one exception; in "warn" the guard would excuse anything beyond it.
        raise ConfigError(f"{where}: a cluster (cluster.interface) needs airgap.mode = \"enforce\"")


# -- recorded changes ----------------------------------------------------------------------------


def parse_value(raw: str) -> Any:
    """A TOML value (``3``, ``true``, ``"x"``, ``["a"]``), or a bare word taken as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def set_value(home: Home, writer: LedgerWriter, key: str, raw: str) -> tuple[Any, Any, Config]:
    """Change one setting: check the whole result, record config.change, then write the file."""
    return change(home, writer, key, typed_value(key, raw))


def typed_value(key: str, raw: str) -> Any:
    """``raw`` as the value of ``key``: a TOML value, or, for a setting in seconds, a duration."""
    if tuple(key.split(".")) not in DURATIONS:
        return parse_value(raw)
    try:
        value = seconds(raw)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if value != int(value):
        raise ConfigError(f"{key} is in whole seconds; {raw!r} is {value} s")
    return int(value)


def change(home: Home, writer: LedgerWriter, key: str, new: Any,
           why: dict[str, Any] | None = None) -> tuple[Any, Any, Config]:
    """Set ``key`` to ``new``: check the whole result, record config.change (with ``why``, what
    prompted it, when given), then write the file. Returns (old value, new value, configuration)."""
    before = load_config(home)
    overrides = _overrides(home)
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "models":
        table = overrides.setdefault("models", {}).setdefault(parts[1], {})
        old = getattr(before.compute_for(parts[1]), parts[2], None)
    elif len(parts) == 2:
        table = overrides.setdefault(parts[0], {})
        old = before.doc.get(parts[0], {}).get(parts[1])
    else:
        raise ConfigError(f"{key}: a setting is SECTION.KEY, or models.NAME.KEY")
    table[parts[-1]] = new
    after = Config(merge(overrides, key))
    if after.get("inference", "record_content") == "sealed" and not home.content_public.exists():
        raise ConfigError("inference.record_content = \"sealed\" needs a content key: run `anticloud content init`")
    data = {"key": key, "old": _plain(old), "new": _plain(new), "digest": after.digest(), "config": after.doc}
    if why:
        data["why"] = why
    if tuple(parts) in AT_NEXT_START:
        data["takes_effect"] = "next start"  # a running engine keeps the value it started with
    writer.append("config.change", data)
    atomic_write(home.config, tomli_w.dumps(overrides).encode(), 0o640)
    return old, new, after


def record_accepted(home: Home, writer: LedgerWriter, kind: str) -> tuple[Config, list[dict[str, Any]]]:
    """Record the configuration now in force as accepted (config.init or config.accept), with what
    changed since the configuration accepted before it (`differences`), which it also returns."""
    config = load_config(home)
    before = last_accepted(home.ledger)
    previous = None if before is None else before.get("config") or accepted_document(home.ledger, str(before["digest"]))
    changes = [] if previous is None else differences(previous, config.doc)
    data: dict[str, Any] = {"digest": config.digest(), "config": config.doc}
    if previous is not None:
        data["changes"] = changes
    writer.append(kind, data)
    return config, changes


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting that differs, as ``{"key": "section.key", "old": ..., "new": ...}`` (None where absent)."""
    found = []
    for section in sorted(old.keys() | new.keys()):
        a, b = old.get(section, {}), new.get(section, {})
        if not isinstance(a, dict) or not isinstance(b, dict):
            a, b = {"": a}, {"": b}
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                name = f"{section}.{key}".rstrip(".")
                found.append({"key": name, "old": _plain(a.get(key)), "new": _plain(b.get(key))})
    return found


def last_accepted(ledger: Path) -> dict[str, Any] | None:
    """The newest accepted configuration, as ``{"digest": ...}`` (with ``"config"`` where the
    record holds the document), or None if nothing was ever accepted.

    Found backwards from the head, in the ledger alone (each record's own hash is checked on
    the way; the links between records are the verifier's to check): the newest config.init, change or
    accept, or the newest ``engine.start`` / ``engine.stop``, each of which states the accepted
    configuration in force (`ACCEPTED`). So a start reads only what was recorded since the last
    engine started or stopped, and nothing beside the ledger is trusted. Engine records written
    before they carried the field are passed over (their ``config`` may be a drifted one that
    warn mode once let start).
    """
    for located in records_backward(ledger, CONFIG_KINDS + ENGINE_KINDS):
        data = located.record.data
        if located.record.kind in CONFIG_KINDS:
            return data
        if isinstance(data.get(ACCEPTED), str):
            return {"digest": data[ACCEPTED]}
    return None


def accepted_document(ledger: Path, digest: str) -> dict[str, Any] | None:
    """The full configuration the ledger accepted with ``digest``, from the newest config record stating it."""
    for located in records_backward(ledger, CONFIG_KINDS):
        if located.record.data.get("digest") == digest and isinstance(located.record.data.get("config"), dict):
            return dict(located.record.data["config"])
    return None


def new_defaults(accepted: dict[str, Any], current: dict[str, Any]) -> list[str] | None:
    """The settings ``current`` adds to ``accepted``, each at its default, as ``section.key``; None
    if anything else differs. Pure: this is what an upgrade of anticloud, not an edit, changes."""
    added: list[str] = []
    for section, values in current.items():
        old = accepted.get(section, {})
        if not isinstance(old, dict) or not isinstance(values, dict):
            return None
        for key, value in values.items():
            if key in old:
                if old[key] != value:
                    return None
            elif section in DEFAULTS and DEFAULTS[section].get(key, object()) == value:
                added.append(f"{section}.{key}")
            else:
                return None
        if set(old) - set(values):
            return None
    return added if set(accepted) <= set(current) else None


def set_override(home: Home, section: str, key: str, value: Any) -> None:
    """Write one setting into ``config.toml`` unrecorded: for `anticloud init`, whose config.init
    records the whole configuration next."""
    overrides = _overrides(home)
    overrides.setdefault(section, {})[key] = value
    merge(overrides, str(home.config))
    atomic_write(home.config, tomli_w.dumps(overrides).encode(), 0o640)


def _overrides(home: Home) -> dict[str, Any]:
    path = home.config
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, bool, list, dict)) else str(value)
