"""What a worker's terminal says about its connection: the SuperNode's log, followed as it
grows, turned into states (connecting, connected, retrying), each said once when it
changes, with the coordinator's address."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fedmerge.deploy.procs import Echo

# Lines of Flower 1.42's SuperNode (flwr/supernode/*, flwr/supercore/retry/http_retry.py)
CONNECTED = re.compile(r"SuperNode ID: (\d+)")
RETRYING = re.compile(r"Connection attempt failed, retrying in ([\d.]+) seconds")
RECONNECTED = re.compile(r"Connection successful after ([\d.]+) seconds")


@dataclass
class ConnectionWatch:
    log_path: Path
    address: str
    echo: Echo
    state: str = ""
    node_id: str = ""
    was_connected: bool = False
    _offset: int = field(default=0, repr=False)
    _partial: str = field(default="", repr=False)

    def start(self) -> None:
        """From the end of the log as it is now: an earlier SuperNode's lines are old."""
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._partial = ""
        self._say("connecting", f"connecting to the coordinator at {self.address}")

    def poll(self) -> None:
        if not self.log_path.exists():
            return
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        if m := CONNECTED.search(line):
            self.node_id = m.group(1)
            self.was_connected = True
            self._say("connected", f"connected to the coordinator at {self.address} "
                                   f"(node id {self.node_id})")
        elif m := RETRYING.search(line):
            # Flower retries both a coordinator that does not answer and one that does not
            # activate this node yet (key not registered): its log does not tell which.
            self._say("retrying", f"coordinator at {self.address} not reachable or not "
                                  "letting this worker in; retrying "
                                  f"(next try in {float(m.group(1)):.1f} s)")
        elif RECONNECTED.search(line) and self.was_connected:
            self._say("connected", f"connected to the coordinator at {self.address} again")

    def _say(self, state: str, message: str) -> None:
        if state != self.state:
            self.state = state
            self.echo(message)
