"""An event as an OCSF 1.8.0 API Activity (class_uid 6003) event: a pure mapping, no I/O.

Each record becomes one event; `export` writes them as JSON Lines. The mapping (docs/siem.md
has it as a table):

* ``activity_id`` from the record's kind (`ACTIVITY`: what the operation does to what it
  names), ``type_uid`` = 6003 * 100 + activity_id, ``severity_id`` from the outcome's level,
  ``status_id`` 1 Success or 2 Failure (99 Other, spelled in ``status``, for interrupted work);
* ``time`` the record's ``ts`` in epoch milliseconds; ``metadata.uid`` its hash,
  ``metadata.sequence`` its seq, ``metadata.original_time`` its ``ts`` as written (to the
  microsecond), ``metadata.correlation_uid`` the inference id linking begin and end;
* ``actor.user`` the person (``name``) and unix uid (``uid``); ``api.operation`` the kind;
* ``src_endpoint``: the appliance listens on loopback and its unix socket only, so every
  request comes from the appliance's own host (``hostname`` when the exporter is told it);
* the ``ai_operation`` profile where a record names a model: ``ai_model`` (name, manifest
  digest, served locally by anticloud) and, for an ``inference.end``, ``message_context``
  with its token counts;
* ``raw_data``: the ledger line itself, so a SIEM keeps a record it can re-hash.
"""

from __future__ import annotations

from typing import Any

from anticloud import __version__
from anticloud.siem.event import Event

OCSF_VERSION = "1.8.0"
CLASS_UID = 6003  # Application Activity (6) / API Activity (3)
CATEGORY_UID = 6
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
ACTIVITY: dict[str, int] = {
    "ledger.genesis": CREATE, "ledger.checkpoint": CREATE, "ledger.seal": CREATE, "seal.enroll": CREATE,
    "config.init": CREATE, "token.create": CREATE, "trust.add": CREATE, "model.import": CREATE,
    "appliance.install": CREATE, "inference.begin": CREATE,
    "config.change": UPDATE, "config.accept": UPDATE, "config.upgrade": UPDATE, "appliance.upgrade": UPDATE,
    "model.load": UPDATE, "model.unload": UPDATE,
    "token.revoke": DELETE, "trust.revoke": DELETE, "model.remove": DELETE,
}
ACTIVITY_NAMES = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", OTHER: "Other"}
SEVERITY_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
STATUS: dict[str, tuple[int, str]] = {
    "success": (1, "Success"), "refused": (2, "Failure"), "breach": (2, "Failure"), "error": (2, "Failure"),
    "interrupted": (99, "Interrupted"),
}


def to_ocsf(event: Event, host: str | None = None) -> dict[str, Any]:
    """The OCSF API Activity event for ``event``; ``host`` names the appliance where known."""
    record, data = event.record, event.record.data
    activity = ACTIVITY.get(record.kind, OTHER)
    status_id, status = STATUS[event.outcome]
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": "anticloud", "vendor_name": "anticloud", "version": __version__},
        "uid": record.hash, "sequence": record.seq, "log_name": "ledger", "event_code": record.kind,
        "original_time": record.ts,
    }
    user: dict[str, Any] = {"name": event.person or "unknown"}
    if event.uid is not None:
        user["uid"] = str(event.uid)
    api: dict[str, Any] = {"operation": record.kind, "service": {"name": "anticloud"}}
    out: dict[str, Any] = {
        "class_uid": CLASS_UID, "class_name": "API Activity",
        "category_uid": CATEGORY_UID, "category_name": "Application Activity",
        "activity_id": activity, "activity_name": ACTIVITY_NAMES[activity] if activity != OTHER else record.kind,
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"API Activity: {ACTIVITY_NAMES[activity] if activity != OTHER else record.kind}",
        "severity_id": event.level.ocsf_id, "severity": SEVERITY_NAMES[event.level.ocsf_id],
        "status_id": status_id, "status": status,
        "time": event.time_ms, "message": event.summary(), "metadata": metadata,
        "actor": {"user": user}, "api": api,
        "src_endpoint": {"name": "local", **({"hostname": host} if host else {})},
        "raw_data": event.line,
    }
    if event.inference:
        metadata["correlation_uid"] = event.inference
        api["request"] = {"uid": event.inference}
    if event.reason and event.outcome != "success":
        out["status_detail"] = event.reason
    if record.kind == "request.rejected" and isinstance(data.get("status"), int):
        out["status_code"] = str(data["status"])
        out["http_response"] = {"code": data["status"]}
        if isinstance(data.get("count"), int):
            out["count"] = data["count"]  # a repeat count: this many identical rejections in its interval
    if event.model:
        metadata["profiles"] = ["ai_operation"]
        model: dict[str, Any] = {"name": event.model, "ai_provider": "anticloud (local)"}
        if isinstance(data.get("manifest"), str):
            model["uid"] = data["manifest"]
        out["ai_model"] = model
    tokens = {k: data[k] for k in ("prompt_tokens", "completion_tokens")
              if isinstance(data.get(k), int) and not isinstance(data.get(k), bool)}
    if record.kind == "inference.end" and tokens:
        metadata.setdefault("profiles", ["ai_operation"])
        out["message_context"] = {"service": {"name": "anticloud"}, "uid": event.inference, **tokens,
                                  "total_tokens": sum(tokens.values())}
    return out
