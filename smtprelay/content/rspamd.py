"""An rspamd client: `POST /checkv2` on the normal worker (rspamd's documented HTTP protocol),
the message as the body and the envelope as headers (From, Rcpt, IP, Helo, User, Queue-Id).

Owns: one aiohttp session per process (kept-alive connections), the request and the reading
of its JSON answer into `Score`. Why rspamd rather than SpamAssassin's spamd: it is C and
event-driven (about 13 ms a message here against spamd's Perl, one process per connection), its
answer is JSON with every symbol and score, and it recognises GTUBE out of the box.

Must never: block the loop, or wait past its timeout.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from smtprelay.content.clamav import ScannerError


@dataclass(frozen=True, slots=True)
class Score:
    score: float
    required: float | None            # rspamd's own reject threshold
    action: str                       # rspamd's advice ("no action", "add header", "reject", ...)
    symbols: dict[str, float] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {"score": self.score, "rspamd_action": self.action, "rspamd_required_score": self.required,
                "rules": [{"name": n, "score": s} for n, s in sorted(self.symbols.items(), key=lambda x: -abs(x[1]))]}


class Rspamd:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def check(self, url: str, data: bytes, timeout: float, envelope: dict[str, str] | None = None) -> Score:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "smtprelay"})
        headers = {k: v for k, v in (envelope or {}).items() if v}
        try:
            async with self._session.post(f"{url}/checkv2", data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    raise ScannerError(f"rspamd at {url} answered HTTP {resp.status}")
                answer = await resp.json(content_type=None)
        except asyncio.TimeoutError:
            raise ScannerError(f"rspamd at {url} did not answer within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise ScannerError(f"rspamd at {url}: {exc}") from None
        if not isinstance(answer, dict) or "score" not in answer:
            raise ScannerError(f"rspamd at {url} gave no score: {str(answer)[:200]}")
        symbols = answer.get("symbols") or {}
        return Score(float(answer["score"]), answer.get("required_score"), str(answer.get("action", "")),
                     {name: float(s.get("score", 0.0)) for name, s in symbols.items() if isinstance(s, dict)})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
