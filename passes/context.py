"""The state a pipeline carries: compile options, the target, what passes report."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .. import flags


@dataclass
class PassContext:
    target: Any = None  # a backends.<name>.target.Target, or None for target-independent runs
    qm: str = "fp32"
    symbol_bounds: dict[str, int] = field(default_factory=dict)  # upper bound of each shape symbol
    options: dict[str, Any] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. stats["plan-memory"] = MemoryPlan
    debug: int = field(default_factory=lambda: flags.get("debug"))

    def log(self, pass_name: str, message: str) -> None:
        """An applied rewrite (printed at debug >= 2)."""
        self._emit(f"[{pass_name}] {message}")

    def refuse(self, pass_name: str, node, reason: str) -> None:
        """A rewrite that did not fire, with its reason (printed at debug >= 2)."""
        self._emit(f"[{pass_name}] refused at {node.op} {node.name!r}: {reason}")

    def _emit(self, text: str) -> None:
        self.messages.append(text)
        if self.debug >= 2:
            print(text, file=sys.stderr)
