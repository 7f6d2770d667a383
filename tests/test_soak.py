"""A short soak (bench/soak.py runs the long one): 100 WebRTC connect/disconnect cycles of every
kind (normal, abrupt, stopped between offer and ICE, never sending anything) against
webrtc_server.py leave no session, task, thread or file descriptor behind, and RSS within 30 MB
of its baseline after a warm-up (the mean of the samples after 50 and 100 cycles)."""
from __future__ import annotations

from server.ice import restrict_ice_hosts
from testing.soak import soak


async def test_a_hundred_cycles_leave_nothing_behind(tmp_path):
    restrict_ice_hosts(["127.0.0.1"])
    run = await soak(tmp_path / "soak.log", cycles=100, warmup=60, every=50, concurrency=4, time_limit=150)
    print(run.table(), run.kinds_table(), sep="\n")
    assert sum(run.done.values()) >= 100 + 60 - len(run.errors)  # every cycle ran (none skipped by the time limit)
    assert all(run.done[kind] for kind in run.done), run.done  # every kind ran
    assert not run.problems(), (run.problems(), run.errors, run.table())
