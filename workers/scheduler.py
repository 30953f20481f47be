"""Every worker moves due delayed tasks from `vokaflow:scheduled:<type>` to their queues.

About once a second, with jitter so a fleet's workers do not poll in step; the move is one Lua
script (tasks.scheduled.MOVE_DUE), so any number of workers may do it at once, like Sidekiq's
scheduled poller. With no worker running nothing moves, and nothing is lost: due tasks move as
soon as one starts. Redis away: the tasks wait in their set until a later poll.
"""

from __future__ import annotations

import random

from workers.polling import PollingStep

INTERVAL = (0.75, 1.25)  # seconds between polls, picked at random each time


class ScheduledPoller(PollingStep):
    thread_name = "vokaflow-scheduled"

    def interval(self) -> float:
        return random.uniform(*INTERVAL)

    def tick(self) -> None:
        from tasks.scheduled import move_due

        move_due()
