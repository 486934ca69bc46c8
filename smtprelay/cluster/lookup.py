"""What a node asks of the cluster's events on a request path (cluster mode, issue 20): an open,
a click or an unsubscribe whose message another node accepted (its link may reach any node
behind the load balancer) is recorded here with what that node's `accepted` event says.

Owns: one PostgreSQL connection of its own (the mirror's is busy listening), opened at the first
question and again after an error. Must never: hold a request longer than its timeout; answer
from a half-read row (None is the answer to any doubt: the request then does what a single node
does with an unknown message).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("smtprelay.cluster")


@dataclass(frozen=True, slots=True)
class Accepted:
    account_id: int | None
    sender_domain: str | None
    recipient_domain: str | None
    tag: str | None
    template_id: int | None
    template_version: int | None
    task_id: int | None
    task_run: int | None
    delivered_at: float | None
    node: str


class ClusterEvents:
    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def accepted(self, queue_id: str, recipient: str) -> Accepted | None:
        import psycopg
        try:
            row = await self._run(
                "SELECT account_id, sender_domain, recipient_domain, tag, template_id, template_version, task_id,"
                " task_run, (SELECT max(d.at) FROM events d WHERE d.queue_id = e.queue_id AND d.recipient ="
                " e.recipient AND d.type = 'delivered'), node FROM events e WHERE queue_id = %s AND recipient = %s"
                " AND type = 'accepted' LIMIT 1", (queue_id, recipient))
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            log.warning("cluster: could not look up message %s in the cluster's events (%s)", queue_id, exc)
            return None
        return None if row is None else Accepted(*row)

    async def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        """One statement on the lookup connection (connecting if needed); psycopg errors raise."""
        import psycopg
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=max(1, int(self.timeout)),
                        application_name="smtprelay lookups")
                cur = await asyncio.wait_for(self._conn.execute(sql, args), self.timeout)
                return await cur.fetchone() if cur.description else None
            except (psycopg.Error, OSError, asyncio.TimeoutError):
                await self.close()
                raise

    async def node_of(self, queue_id: str) -> str | None:
        """The node that accepted this message (its events say), or None (not known, or no answer)."""
        import psycopg
        try:
            row = await self._run("SELECT node FROM events WHERE queue_id = %s LIMIT 1", (queue_id,))
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            log.warning("cluster: could not look up the node of message %s (%s)", queue_id, exc)
            return None
        return None if row is None else str(row[0])

    async def hand_over(self, node: str, from_node: str, peer: str, mail_from: str, rcpt_to: tuple[str, ...],
                        raw: bytes) -> bool:
        """A bounce or complaint for `node` to apply (cluster.mirror picks it up there)."""
        import json

        import psycopg
        try:
            await self._run("INSERT INTO feedback_relay (node, from_node, peer, mail_from, rcpt_to, raw) VALUES"
                            " (%s, %s, %s, %s, %s::jsonb, %s)", (node, from_node, peer, mail_from,
                                                                json.dumps(list(rcpt_to)), raw))
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            log.warning("cluster: could not hand a report over to node %s (%s)", node, exc)
            return False
        return True

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:       # closing a broken connection: nothing more to do
                pass
            self._conn = None
