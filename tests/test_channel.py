"""The worker–back end channel when the other process dies (issue 24, item 5)."""
from __future__ import annotations

import asyncio
import gc
import logging
import socket

import pytest

from smtprelay.smtp.channel import Channel, ChannelClosed


def test_calls_pending_when_the_other_side_dies_leave_no_unretrieved_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        worker, backend = Channel(), Channel(handler=lambda op, args: loop.create_future())  # never answers
        await loop.create_unix_connection(lambda: worker, sock=ours)
        await loop.create_unix_connection(lambda: backend, sock=theirs)
        awaited = worker.call("enqueue", 1)
        abandoned = [worker.call("rcpt", n) for n in range(3)]   # their sessions went away
        await asyncio.sleep(0)
        backend.close()                                            # the back end is killed
        with pytest.raises(ChannelClosed):
            await awaited                                          # an awaiting caller still learns it
        del abandoned
        await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert "never retrieved" not in caplog.text
