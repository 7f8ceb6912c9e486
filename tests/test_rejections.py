"""Rejections recorded compactly: the number of records is bounded whatever varies."""

from __future__ import annotations

from typing import Any

from anticloud.api.rejections import RejectionLog


def test_varying_reasons_cannot_buy_records_past_the_bound() -> None:
    written: list[dict[str, Any]] = []
    log = RejectionLog(written.append, interval=60, max_kinds=8, clock=lambda: 0.0)
    sent = 0
    for i in range(500):  # what a client controls: the path, and text that ends up in the reason
        log.record("anonymous", f"/api/x{i}", 405, f"method X{i} is not allowed", {})
        log.record("anonymous", "/api/chat", 400, f"malformed JSON: Expecting value at char {i}", {})
        sent += 2
    log.flush(force=True)
    assert len(written) <= 8 + 2 * 2, f"{len(written)} records for {sent} rejections"  # 2 folded kinds
    assert sum(w.get("count", 1) for w in written) == sent, "every rejection is still counted"
    folded = [w for w in written if w["path"] == "*"]
    assert folded and all(w["reason"] == "*" for w in folded)


def test_every_record_names_its_actor_and_different_senders_are_counted_apart() -> None:
    written: list[dict[str, Any]] = []
    log = RejectionLog(written.append, interval=60, max_kinds=1, clock=lambda: 0.0)
    ann, bob = {"uid": 1000, "user": "ann"}, {"uid": 1001, "user": "bob"}
    for i in range(3):  # past max_kinds: folded, but never across senders
        log.record(f"uid:{ann['uid']}", f"/x{i}", 401, "no", ann)
        log.record(f"uid:{bob['uid']}", f"/x{i}", 401, "no", bob)
    log.flush(force=True)
    assert all(w["actor"] in (ann, bob) for w in written)
    for who in (ann, bob):
        assert sum(w.get("count", 1) for w in written if w["actor"] == who) == 3
