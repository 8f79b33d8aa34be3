"""Repeated log lines are thinned, counted and said; the counters they report stay complete."""

from __future__ import annotations

import logging

from hardware.dryrun import NullTrigger
from mimlsort.logthrottle import LogThrottle


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_a_burst_goes_out_then_one_line_per_interval_saying_how_many_were_held(caplog):
    clock = Clock()
    thr = LogThrottle(logging.getLogger("t.throttle"), interval_s=1.0, burst=2, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.throttle"):
        sent = [thr.log(logging.WARNING, "late", "pulse %d late", i) for i in range(10)]
        assert sent == [True, True] + [False] * 8
        clock.t += 0.5
        assert not thr.log(logging.WARNING, "late", "pulse %d late", 10)
        assert thr.log(logging.WARNING, "other kind", "another %s", "line")  # kinds are counted apart
        clock.t += 0.6  # 1.1 s since the last 'late' line
        assert thr.log(logging.WARNING, "late", "pulse %d late", 11)
        thr.log(logging.WARNING, "late", "pulse %d late", 12)
        thr.flush()
        thr.flush()  # nothing held back any more: says nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["pulse 0 late", "pulse 1 late", "another line",
                     "pulse 11 late (and 9 more like it held back since the last such line)",
                     "1 more like this were held back; the last: pulse 12 late"]


def test_a_device_error_per_pulse_is_counted_in_full_and_logged_thinned(caplog):
    trig = NullTrigger().open()
    with caplog.at_level(logging.ERROR, logger="hardware.trigger"):
        for i in range(1000):
            trig._device_error(f"ERR 6 id={i} late 300")
        trig.close()
    assert trig.device_errors == 1000
    assert trig.error == "ERR 6 id=999 late 300"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert 3 <= len(lines) <= 6  # the first three, maybe one a second later, and the closing count
    assert lines[-1].endswith("the last: null trigger null reports: ERR 6 id=999 late 300")
    said = 0  # every error is either a line or counted in one
    for line in lines:
        if "more like it held back" in line:
            said += 1 + int(line.rsplit("(and ", 1)[1].split()[0])
        elif "more like this were held back" in line:
            said += int(line.split()[0])
        else:
            said += 1
    assert said == 1000
