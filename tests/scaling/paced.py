"""`python paced.py ARGS...` is `python -m wan22bot ARGS...` with every sampler step held to at
least $WAN22BOT_TEST_STEP_SECONDS (in the GPU thread): a job lasts as long as the test needs to act
on it mid-render, on any machine, without burning the CPU cores the other processes share."""

from __future__ import annotations

import os
import sys
import time


def pace() -> None:
    seconds = float(os.environ.get("WAN22BOT_TEST_STEP_SECONDS") or 0)
    if seconds <= 0:
        return
    import wan22bot.engine.generator as generator_module

    real = generator_module.make_scheduler

    def paced_scheduler(shift):
        sched = real(shift)
        step = sched.step

        def paced_step(*args, **kwargs):
            t_end = time.monotonic() + seconds
            out = step(*args, **kwargs)
            time.sleep(max(0.0, t_end - time.monotonic()))
            return out

        sched.step = paced_step
        return sched

    generator_module.make_scheduler = paced_scheduler


if __name__ == "__main__":
    pace()
    from wan22bot.cli import main

    sys.exit(main(sys.argv[1:]))
