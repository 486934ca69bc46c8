from __future__ import annotations

from smtprelay.clock import FakeClock
from smtprelay.smtp.guards import AuthLockout, ConnectionLimiter


def test_lockout_window_and_expiry() -> None:
    clock = FakeClock()
    lockout = AuthLockout(clock, max_failures=3, window=60, lockout=900)
    assert not lockout.failure("1.2.3.4")
    clock.advance(61)  # the first failure leaves the window
    assert not lockout.failure("1.2.3.4")
    assert not lockout.failure("1.2.3.4")
    assert lockout.failure("1.2.3.4")  # third within 60 s
    assert lockout.locked("1.2.3.4") and not lockout.locked("5.6.7.8")
    clock.advance(899)
    assert lockout.locked("1.2.3.4")
    clock.advance(1)
    assert not lockout.locked("1.2.3.4")


def test_success_clears_failures_and_prune_forgets() -> None:
    clock = FakeClock()
    lockout = AuthLockout(clock, max_failures=2, window=60, lockout=10)
    lockout.failure("a")
    lockout.success("a")
    assert not lockout.failure("a")
    lockout.failure("b")
    lockout.failure("b")
    clock.advance(100)
    lockout.prune()
    assert lockout._failures == {} and lockout._locked_until == {}


def test_connection_limiter() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_client=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert limiter.acquire("a") == "per_client"
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == "total"
    limiter.release("a")
    assert limiter.acquire("c") is None
    limiter.release("a")
    limiter.release("b")
    limiter.release("c")
    assert limiter.total == 0 and dict(limiter.per_client) == {}


def test_generated_passwords_are_strong_and_shell_safe() -> None:
    import math
    import string

    from smtprelay.accounts import new_password
    passwords = {new_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(len(p) == 32 and set(p) <= set(string.ascii_letters + string.digits) for p in passwords)
    assert 32 * math.log2(62) >= 128


def test_repeated_lines_are_summarized_past_a_burst() -> None:
    """Issue 23, item 7: anvil-style summaries instead of a flood, with a fake clock."""
    import logging as logging_
    from smtprelay.logs import JsonFormatter, RepeatLimiter
    records: list[str] = []

    class Keep(logging_.Handler):
        def emit(self, record: logging_.LogRecord) -> None:
            records.append(record.getMessage())
    logger = logging_.getLogger("test.repeats")
    logger.handlers[:], logger.propagate = [Keep()], False
    logger.setLevel(logging_.INFO)
    now = [100.0]
    limiter = RepeatLimiter(logger, lambda: now[0], window=60.0, burst=3)
    for _ in range(10):
        limiter.log(("c", "192.0.2.1"), "[192.0.2.1]: connections refused", logging_.WARNING, "refused %s", "x")
    limiter.log(("c", "192.0.2.2"), "[192.0.2.2]: connections refused", logging_.WARNING, "refused %s", "y")
    assert records == ["refused x"] * 3 + ["refused y"]
    limiter.flush()                                  # the window is not over: nothing yet
    now[0] += 60
    limiter.flush()
    assert records[-1] == "[192.0.2.1]: connections refused: 7 more in the last 60s (after 3 logged one by one)"
    assert len(records) == 5                         # 192.0.2.2 had nothing suppressed: no summary
    limiter.log(("c", "192.0.2.1"), "[192.0.2.1]: connections refused", logging_.WARNING, "refused %s", "z")
    assert records[-1] == "refused z"                # a new window logs again
    # JSON lines carry the pid the README promises.
    line = JsonFormatter().format(logging_.LogRecord("smtprelay", logging_.INFO, "", 0, "hello", (), None))
    assert __import__("json").loads(line)["pid"] == __import__("os").getpid()


def test_an_outage_is_two_lines_not_one_per_retry() -> None:
    """Issue 24, item 5: one line when a loop's dependency starts failing, one when it recovers."""
    import logging as logging_
    from smtprelay.logs import Outage
    records: list[logging_.LogRecord] = []

    class Keep(logging_.Handler):
        def emit(self, record: logging_.LogRecord) -> None:
            records.append(record)
    logger = logging_.getLogger("test.outage")
    logger.handlers[:], logger.propagate = [Keep()], False
    now = [0.0]
    outage = Outage(logger, "webhooks", lambda: now[0])
    outage.ok()
    for _ in range(60):
        outage.failed(OSError("database or disk is full"))
        now[0] += 1
    outage.ok()
    outage.ok()
    assert [r.getMessage() for r in records] == [
        "webhooks: failing (database or disk is full); retrying quietly until it recovers",
        "webhooks: recovered after 60 failed round(s) in 60s"]
    assert records[0].exc_info is None                       # an expected failure: no traceback
    try:
        raise KeyError("bug")
    except KeyError as exc:
        outage.failed(exc, expected=False)
    assert records[-1].exc_info is not None                  # an unexpected one keeps its traceback
