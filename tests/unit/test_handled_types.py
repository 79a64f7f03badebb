"""A worker's view of the job types it has a handler for."""

from __future__ import annotations

from conveyor import Conveyor
from conveyor.registry import handled


def test_a_declared_only_type_is_not_handled() -> None:
    app = Conveyor("memory://")

    @app.job("send")
    async def send(payload: object) -> None:
        return None

    app.declare("report")
    types = handled(app.registry)
    assert "send" in types and types.get("send") is app.registry["send"]
    assert "report" not in types and types.get("report") is None
    assert "nothing" not in types and types.get("nothing", 7) == 7
    assert 3 not in types
    assert list(types) == ["send"] and len(types) == 1
