"""The anticloud package's exceptions: one root, narrow subclasses carrying what callers need."""

from __future__ import annotations


class AnticloudError(Exception):
    """Root of every error the anticloud package raises."""


def first_line(exc: BaseException, limit: int = 500) -> str:
    """What a record says of an error: its message's first line, cut at ``limit``, or its type."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]


class NotInitializedError(AnticloudError):
    """The appliance home has no identity or ledger yet: run `anticloud init`."""


class AlreadyInitializedError(AnticloudError):
    """`anticloud init` found an identity or a ledger that it must not overwrite."""


class KeyFileError(AnticloudError):
    """A private key file is missing, unreadable, malformed or readable by others."""


class GgufError(AnticloudError):
    """A GGUF file is malformed or outside the policy's limits; llama.cpp must not parse it."""


class ConfigError(AnticloudError):
    """The configuration file is unreadable, or names an unknown or ill-typed setting."""


class ManifestError(AnticloudError):
    """A manifest or signatures document is malformed."""


class SignatureError(AnticloudError):
    """Too few valid signatures by trusted, unrevoked keys; carries the evidence."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class TrustError(AnticloudError):
    """A trust-store operation cannot be done (unknown key, already trusted, bad key file)."""


class BundleError(AnticloudError):
    """A bundle is hostile or broken: it names what, and nothing is written to the store."""


class ModelError(AnticloudError):
    """A model is unknown, already present, or cannot be removed."""


class AdmissionError(BundleError, ModelError):
    """A model breaks a rule of `anticloud.admission`; carries the rule and its evidence. A bundle
    error at import, and at load the reason of the `LoadRefused` that wraps it."""

    def __init__(self, message: str, evidence: dict[str, object]) -> None:
        super().__init__(message)
        self.evidence = evidence


class LoadRefused(AnticloudError):
    """A model failed its load-time verification; carries the evidence recorded in the ledger."""

    def __init__(self, message: str, evidence: dict[str, object]) -> None:
        super().__init__(message)
        self.evidence = evidence


class EngineError(AnticloudError):
    """An engine is unknown, or failed to load or generate."""


class EngineRefused(AnticloudError):
    """The engine refuses to start: a reachable network, a configuration no record accepted, another
    engine on the home, or a file at the socket path that is not a stale socket."""


class Busy(AnticloudError):
    """The model's places are taken and its wait queue is full, or the engine is stopping: try
    again after ``retry_after`` seconds (HTTP's Retry-After)."""

    retry_after = 1


class AirGapBreached(AnticloudError):
    """A network became reachable while serving; inferences are refused until it goes away."""


class AirGapUnobserved(AirGapBreached):
    """The network could not be checked while serving; refused like a breach until a check succeeds."""


class StreamStalled(AnticloudError):
    """A client stopped reading its stream for longer than ``api.stall_timeout``; it was cut off."""


class TokenError(AnticloudError):
    """A token operation cannot be done (bad name, already present, nothing to revoke)."""


class PromptTooLong(AnticloudError):
    """The prompt does not fit the model's context; nothing was generated."""


class SchemaRefused(AnticloudError):
    """A structured-output schema asks for what the grammar cannot enforce; the message names the construct."""


class ContentError(AnticloudError):
    """A candidate prompt, output or input that cannot be hashed as the appliance does (not UTF-8, bad messages)."""


class Unsupported(AnticloudError):
    """The model or its engine cannot do what was asked (such as embeddings from a model that makes none)."""


class EngineRunning(EngineRefused):
    """Another engine holds this home's engine lock; carries its pid (None if it cannot be seen)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class StopError(AnticloudError):
    """`anticloud stop` found no server of this home to signal, or it did not stop in time."""


class UnsafeHomeError(AnticloudError):
    """The home, a directory above it, or a file in it can be changed by someone other than its owner."""


class IdentityUnavailable(AnticloudError):
    """The caller's real uid cannot be established, so the connection gets no uid identity (fail closed)."""


class ServerError(AnticloudError):
    """A running server could not be reached, refused a request, or broke off an answer; says which."""


class InstallError(AnticloudError):
    """An install from a kit cannot be ordered or recorded: an unordered version, a downgrade not
    forced, or an installation that no kit's install.sh made."""


class ExportError(AnticloudError):
    """An export cannot be written in the format asked for (an unknown format, a bad output)."""


class AuditQueryError(AnticloudError):
    """An audit question cannot be asked as given: a time, kind, outcome or person that does not parse."""


class EvidenceError(AnticloudError):
    """An evidence package cannot be made: nothing matches, the ledger does not verify, or the file exists."""


class WitnessError(AnticloudError):
    """The witness refused a request, or its state cannot be used; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ContentSealError(AnticloudError):
    """Sealed content cannot be sealed, read or erased as asked: a missing or wrong key, a
    commitment that does not hold, a legal hold in the way."""


class ErasureHeld(ContentSealError):
    """A legal hold in force covers what an erasure would destroy; nothing was erased."""


class ClusterError(AnticloudError):
    """The cluster link cannot be set up or used: settings, keys, a peer, or the RPC backend."""


class ClusterLost(ClusterError, EngineError):
    """A worker ended its session with the engine (it stopped, or a breach): llama.cpp would abort
    at its next use of the link, so nothing runs on it until the engine restarts."""
