"""An app for the "nothing slow holds anything up" tests: six projections counting events
per stream, one of whose handlers can be made slow.

Used as `--app tests/resilience_support.py` by daemon subprocesses. An event with
`{"slow": SECONDS, "only": NAME}` makes projection NAME's handler sleep that long, but
only while the file named by CQRSCTL_TEST_SLOW_FLAG exists; the handler then writes
`slow NAME PID POSITION` to the file named by CQRSCTL_TEST_TRACE as it starts sleeping.
CQRSCTL_TEST_EACH_SLOW (seconds) makes every handler call that slow.
"""

from __future__ import annotations

import os
import time

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.projection import EventView, Projection, ReadModel, Table

NAMES = [f"p_{i}" for i in range(6)]
app = App("resilience-tests")


def _counting(name: str) -> type[Projection]:
    def on_Added(self: Projection, event: EventView, rm: ReadModel) -> None:
        each = os.environ.get("CQRSCTL_TEST_EACH_SLOW")
        if each:
            time.sleep(float(each))
        seconds = event.data.get("slow")
        flag = os.environ.get("CQRSCTL_TEST_SLOW_FLAG")
        if seconds and event.data.get("only") == name and flag and os.path.exists(flag):
            trace = os.environ.get("CQRSCTL_TEST_TRACE")
            if trace:
                with open(trace, "a") as f:
                    f.write(f"slow {name} {os.getpid()} {event.position}\n")
            time.sleep(float(seconds))
        row = rm.get(name, stream=event.stream_id) or {"events": 0}
        rm.upsert(name, {"stream": event.stream_id, "events": row["events"] + 1})

    return type(
        f"Counting_{name}",
        (Projection,),
        {"tables": {name: Table({"stream": "text", "events": "int"}, key=["stream"])}, "on_Added": on_Added},
        name=name,
    )


for _name in NAMES:
    app.projection(_counting(_name))


# -- sagas: a reaction whose command can be made slow ------------------------------------------

saga_app = App("resilience-sagas")


class Pinged(Event):
    pong_id: str
    slow: float = 0


class Ponged(Event):
    pass


class Pong(Aggregate, category="Pong"):
    pongs: int = 0

    def when_Ponged(self, e: Ponged) -> None:
        self.pongs += 1


@saga_app.command(aggregate=Pong, stream=lambda c: c.pong_id)
class SendPong(Command):
    """Sleeps `slow` seconds while the CQRSCTL_TEST_SLOW_FLAG file exists (tracing it)."""

    pong_id: str
    slow: float = 0

    def handle(self, pong: Pong) -> list[Event]:
        flag = os.environ.get("CQRSCTL_TEST_SLOW_FLAG")
        if self.slow and flag and os.path.exists(flag):
            trace = os.environ.get("CQRSCTL_TEST_TRACE")
            if trace:
                with open(trace, "a") as f:
                    f.write(f"slow-pong {self.pong_id} {os.getpid()}\n")
            time.sleep(self.slow)
        return [Ponged()]


saga_app.react(Pinged, lambda e: SendPong(pong_id=e.pong_id, slow=e.slow))
