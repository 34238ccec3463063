"""The append-only audit log: torn lines, seconds per item."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from review_fixtures import audit_of, open_review_store

from tasks.review.audit import seconds_per_item


def test_seconds_per_item_median_of_gaps_without_breaks_or_automatic_reviewers():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def e(seconds, who="ann", source="app"):
        return {"outcome": "saved", "source": source, "action": "decide", "reviewer": who,
                "time": (t0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")}

    entries = [e(0), e(2), e(6), e(1000), e(0, "bob"), e(3, "bob"), e(1, "auto", source="stage")]
    assert seconds_per_item(entries) == 3.0  # gaps 2, 4, 3; the 994 s break is dropped
    assert seconds_per_item([e(0)]) is None


def test_seconds_per_item_counts_label_studio_lead_times():
    """An item labelled in Label Studio has no app timestamps to difference: its annotation's lead_time counts."""
    def ls(lead, outcome="saved"):
        return {"outcome": outcome, "source": "labelstudio", "action": "import", "reviewer": "ann",
                "time": "2024-01-01T00:00:00Z", "context": {"key": "k", "annotation": {"lead_time": lead}}}

    assert seconds_per_item([ls(4.0), ls(6.0), ls(2.0)]) == 4.0
    assert seconds_per_item([ls(5.0), ls(99.0, outcome="conflict"), ls(None), ls("7"), ls(10_000.0)]) == 5.0




def test_torn_audit_line_is_skipped_and_next_append_starts_a_new_line(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    audit = manual.paths.review / "audit.jsonl"
    with audit.open("a") as fh:
        fh.write('{"torn": ')  # a kill mid-append
    store = open_review_store(manual)
    assert store.versions[f] == 1
    store.decide(f, "small", version=1, reviewer="ann")
    entries = audit_of(manual)
    assert [e["version"] for e in entries] == [1, 2]
    assert audit.read_text().startswith(json.dumps(entries[0], sort_keys=True))  # never rewritten
