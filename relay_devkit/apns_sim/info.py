"""What a started simulator's sim.json says, and waiting for it to be written."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

SIM_JSON = "sim.json"


@dataclass(frozen=True, slots=True)
class SimInfo:
    """Where the simulator listens and which key it trusts (sim.json, written last)."""

    host: str
    port: int  # production
    control_port: int
    ca: Path
    key_file: Path
    key_id: str
    team_id: str
    workers: int = 1
    sandbox_port: int = 0

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Self:
        return cls(
            host=document["host"],
            port=document["port"],
            control_port=document["control_port"],
            ca=Path(document["ca"]),
            key_file=Path(document["key_file"]),
            key_id=document["key_id"],
            team_id=document["team_id"],
            workers=document.get("workers", 1),
            sandbox_port=document.get("sandbox_port", 0),
        )

    @classmethod
    def from_file(cls, path: Path) -> Self:
        return cls.from_document(json.loads(path.read_text()))

    @classmethod
    def wait_for(
        cls, state_dir: Path, timeout_s: float, *, alive: Callable[[], bool] | None = None
    ) -> Self:
        """Read state_dir/sim.json once the simulator has written it (atomically, last).
        `alive`, if given, is polled: a simulator that exits early fails the wait at once."""
        path = state_dir / SIM_JSON
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if alive is not None and not alive():
                raise RuntimeError(f"the APNs simulator exited before writing {path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout_s} s")
            time.sleep(0.02)
        return cls.from_file(path)

    def document(self) -> dict[str, Any]:
        """As sim.json has it (paths as text)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def port_of(self, environment: str) -> int:
        return self.sandbox_port if environment == "sandbox" else self.port

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"
