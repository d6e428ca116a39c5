"""The settle state machine on its own: made-up signatures and times, no folder, no observer."""

from __future__ import annotations

from wan22bot.sources.watch import EMPTY_GRACE_SECONDS, Settler


def test_a_candidate_is_ready_only_after_staying_unchanged_for_settle_seconds():
    s = Settler(1.0)
    assert s.add("a.jpg") and not s.add("a.jpg")
    assert s.ready({"a.jpg": (10, 1, ())}, now=100.0) == []
    assert s.ready({"a.jpg": (10, 1, ())}, now=100.9) == []
    assert s.ready({"a.jpg": (20, 2, ())}, now=101.0) == []  # it grew: the clock starts again
    assert s.ready({"a.jpg": (20, 2, ())}, now=101.9) == []
    assert s.ready({"a.jpg": (20, 2, ())}, now=102.0) == ["a.jpg"]


def test_a_companion_change_restarts_the_clock():
    s = Settler(1.0)
    s.add("a.jpg")
    s.ready({"a.jpg": (10, 1, ())}, now=0.0)
    assert s.ready({"a.jpg": (10, 1, (("a.jpg.txt", 3, 5),))}, now=1.0) == []
    assert s.ready({"a.jpg": (10, 1, (("a.jpg.txt", 3, 5),))}, now=2.0) == ["a.jpg"]


def test_an_empty_file_gets_the_longer_grace():
    s = Settler(0.5)
    s.add("e.jpg")
    s.ready({"e.jpg": (0, 1, ())}, now=0.0)
    assert s.ready({"e.jpg": (0, 1, ())}, now=EMPTY_GRACE_SECONDS - 0.01) == []
    assert s.ready({"e.jpg": (0, 1, ())}, now=EMPTY_GRACE_SECONDS) == ["e.jpg"]


def test_ready_is_oldest_mtime_first_and_defer_holds_back():
    s = Settler(0.0)
    for k in ("new.jpg", "old.jpg", "mid.jpg"):
        s.add(k)
    sigs = {"new.jpg": (1, 30, ()), "old.jpg": (1, 10, ()), "mid.jpg": (1, 20, ())}
    assert s.ready(sigs, now=5.0) == ["old.jpg", "mid.jpg", "new.jpg"]
    s.defer("mid.jpg", until=9.0)
    assert s.ready(sigs, now=6.0) == ["old.jpg", "new.jpg"]
    s.retry_all()
    assert s.ready(sigs, now=6.0) == ["old.jpg", "mid.jpg", "new.jpg"]


def test_unsettle_makes_it_wait_a_full_period_again():
    s = Settler(1.0)
    s.add("a.jpg")
    s.ready({"a.jpg": (5, 1, ())}, now=0.0)
    assert s.ready({"a.jpg": (5, 1, ())}, now=1.0) == ["a.jpg"]
    s.unsettle("a.jpg")
    assert s.ready({"a.jpg": (5, 1, ())}, now=1.5) == []
    assert s.ready({"a.jpg": (5, 1, ())}, now=2.5) == ["a.jpg"]
    s.discard("a.jpg")
    assert "a.jpg" not in s and not s


def test_an_open_writer_holds_a_stable_file_back_until_it_closes():
    s = Settler(1.0, track_writers=True)
    s.add("copy.jpg")
    s.wrote("copy.jpg")
    s.ready({"copy.jpg": (100, 1, ())}, now=0.0)
    assert s.ready({"copy.jpg": (100, 1, ())}, now=5.0) == []  # stable for 5 s, but still open
    s.closed("copy.jpg")
    assert s.ready({"copy.jpg": (100, 1, ())}, now=5.0) == ["copy.jpg"]


def test_a_lost_close_event_does_not_hold_a_file_forever():
    s = Settler(1.0, track_writers=True)
    s.add("copy.jpg")
    s.wrote("copy.jpg")
    s.ready({"copy.jpg": (100, 1, ())}, now=0.0)
    assert s.ready({"copy.jpg": (100, 1, ())}, now=s.open_writer_limit() - 1) == []
    assert s.ready({"copy.jpg": (100, 1, ())}, now=s.open_writer_limit()) == ["copy.jpg"]


def test_without_close_events_writes_do_not_hold_anything_back():
    s = Settler(1.0, track_writers=False)
    s.add("copy.jpg")
    s.wrote("copy.jpg")
    s.ready({"copy.jpg": (100, 1, ())}, now=0.0)
    assert s.ready({"copy.jpg": (100, 1, ())}, now=1.0) == ["copy.jpg"]
