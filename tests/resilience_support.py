"""An app for the "nothing slow holds anything up" tests: six projections counting events
per stream, one of whose handlers can be made slow.

Used as `--app tests/resilience_support.py` by daemon subprocesses. An event with
`{"slow": SECONDS, "only": NAME}` makes projection NAME's handler sleep that long, but
only while the file named by CQRSCTL_TEST_SLOW_FLAG exists; the handler then writes
`slow NAME PID POSITION` to the file named by CQRSCTL_TEST_TRACE as it starts sleeping.
"""

from __future__ import annotations

import os
import time

from cqrsctl.app import App
from cqrsctl.projection import EventView, Projection, ReadModel, Table

NAMES = [f"p_{i}" for i in range(6)]
app = App("resilience-tests")


def _counting(name: str) -> type[Projection]:
    def on_Added(self: Projection, event: EventView, rm: ReadModel) -> None:
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
