"""Workers wait for the rows finished in a loop turn to be written before their next send
(``_Session.rows_written``): one worker's cancellation must not end the others' wait."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from batchrunner.config import RunConfig
from batchrunner.progress import LiveStats
from batchrunner.runner import _Session


class _Journal:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows


async def test_a_cancelled_worker_does_not_end_the_wait_of_the_others() -> None:
    # They shared one future: cancelling one waiter cancelled it, and every other worker
    # waiting on it ended as if cancelled, its requests never sent.
    journal = _Journal()
    config = RunConfig(requests=Path("set.jsonl"))
    session = _Session(config=config, store=journal, client=None,  # type: ignore[arg-type]
                       run_id="r", stats=LiveStats(None), rejects=io.BytesIO(),
                       stderr=io.StringIO(), quiet=True)
    session._pending_rows.append({"input_index": 0})
    cancelled = asyncio.ensure_future(session.rows_written())
    other = asyncio.ensure_future(session.rows_written())
    await asyncio.sleep(0)  # both wait
    cancelled.cancel()
    await asyncio.gather(cancelled, other, return_exceptions=True)
    assert cancelled.cancelled()
    assert not other.cancelled() and other.exception() is None
    assert journal.rows == [{"input_index": 0}]  # written before the other went on
