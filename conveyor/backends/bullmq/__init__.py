"""The `bullmq://` backend: BullMQ's Redis layout and Lua scripts (see backend.py)."""

from __future__ import annotations

from conveyor.backends.bullmq.backend import BullMQBackend

__all__ = ["BullMQBackend"]
