"""How API nodes merge the workers' own catalogs (no Redis needed: the merge reads what Redis returned)."""

from __future__ import annotations

import json

import pytest

from app.queue.redis.catalog import merge, publish, unserved
from app.store.catalog import ModelEntry


def entry(name: str, *, status: str = "ready", error: str | None = None, loaded: bool = False) -> ModelEntry:
    return ModelEntry(name=name, path=name, status=status, error=error, loaded=loaded)  # type: ignore[arg-type]


def catalogs(**workers: list[ModelEntry]) -> dict[bytes, bytes]:
    return {worker.encode(): publish({e.name: e for e in entries}).encode() for worker, entries in workers.items()}


def when(**workers: float) -> dict[bytes, bytes]:
    return {worker.encode(): str(t).encode() for worker, t in workers.items()}


def test_a_model_is_served_when_any_worker_serves_it_whatever_the_others_say():
    merged = merge(
        catalogs(
            small=[entry("big", status="error", error="its weights need 9 GB; the budget is 2 GB"), entry("tiny")],
            large=[entry("big")],
        ),
        when(small=120.0, large=100.0),  # the one that refuses it announced last
        since=0.0,
    )
    assert list(merged) == ["big", "tiny"] and merged["big"].ready and merged["tiny"].ready


def test_a_model_no_worker_serves_says_why_from_the_latest_announcement():
    merged = merge(
        catalogs(
            a=[entry("m", status="error", error="old reason")],
            b=[entry("m", status="error", error="new reason")],
        ),
        when(a=100.0, b=120.0),
        since=0.0,
    )
    assert merged["m"].status == "error" and merged["m"].error == "new reason"


def test_of_the_workers_serving_a_model_the_latest_describes_it_and_any_one_makes_it_loaded():
    newer = entry("m", loaded=False)
    newer.weights_bytes = 2
    older = entry("m", loaded=True)
    older.weights_bytes = 1
    merged = merge(catalogs(new=[newer], old=[older]), when(new=120.0, old=100.0), since=0.0)
    assert merged["m"].weights_bytes == 2 and merged["m"].loaded


def test_workers_announced_before_the_cutoff_or_never_are_left_out():
    merged = merge(
        catalogs(gone=[entry("only-gone")], undated=[entry("only-undated")], here=[entry("here")]),
        when(gone=99.0, here=100.0),
        since=100.0,
    )
    assert list(merged) == ["here"]


def test_what_a_worker_publishes_is_what_the_api_reads_back():
    published = json.loads(publish({"m": entry("m", loaded=True)}))
    assert ModelEntry.from_dict(published["m"]).to_dict() == entry("m", loaded=True).to_dict()


def test_a_worker_is_forgotten_only_after_its_lease():
    import pydantic

    from app.settings import Settings

    assert Settings(lease_s=15, worker_forget_s=16).worker_forget_s == 16
    with pytest.raises(pydantic.ValidationError, match="worker_forget_s must be longer than lease_s"):
        Settings(lease_s=15, worker_forget_s=15)


def test_unserved_models_are_those_no_worker_heard_since_the_cutoff_serves_with_why():
    found = unserved(
        {"only-forgotten", "also-here", "broken", "fine", "never-announced"},
        catalogs(
            forgotten=[entry("only-forgotten"), entry("also-here")],
            here=[entry("also-here"), entry("broken", status="error", error="bad config"), entry("fine")],
            other=[entry("fine", status="error", error="too big here")],
        ),
        when(forgotten=50.0, here=100.0, other=100.0),
        since=100.0,
    )
    assert found == {"only-forgotten": None, "broken": "bad config", "never-announced": None}


def test_each_model_counts_the_workers_serving_it_now():
    merged = merge(
        catalogs(
            stopped=[entry("a"), entry("b", loaded=True)],  # kept for a restart; it serves nothing now
            up=[entry("a"), entry("b", status="error", error="too big here")],
            also_up=[entry("a")],
        ),
        when(stopped=50.0, up=100.0, also_up=99.0),
        since=0.0,
        live_since=90.0,
    )
    assert {name: e.workers for name, e in merged.items()} == {"a": 2, "b": 0}
    assert merged["b"].ready and not merged["b"].loaded  # the stopped worker served it: its jobs queue for it
    assert merged["a"].public()["workers"] == 2
    assert "workers" not in merge(catalogs(up=[entry("a")]), when(up=100.0), since=0.0)["a"].public()  # not counted
