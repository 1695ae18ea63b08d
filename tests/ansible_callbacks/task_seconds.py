"""An Ansible callback for the VM tests: how long each task took, slowest first, at the end.

Ansible's own task profiler lives in a collection the lab does not install; this is the
few lines of it the VM tests need to show where a provision's minutes go.
"""

from __future__ import annotations

import time
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]


class CallbackModule(CallbackBase):  # type: ignore[misc]
    """Times each task from its start to the next task's (or the play's end)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_seconds"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._current: tuple[str, float] | None = None
        self._seconds: dict[str, float] = {}

    def _close(self) -> None:
        if self._current is not None:
            name, began = self._current
            self._seconds[name] = self._seconds.get(name, 0.0) + time.monotonic() - began
            self._current = None

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close()
        ranked = sorted(self._seconds.items(), key=lambda item: -item[1])
        self._display.display("TASK SECONDS")
        for name, seconds in ranked[:12]:
            self._display.display(f"{seconds:7.1f} s  {name}")
