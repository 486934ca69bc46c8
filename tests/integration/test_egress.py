"""Egress IP pools (issue 19) with the relay as a process: loopback aliases 127.0.8.x are the
"public" addresses (Linux binds them without an interface), a receiving server records the
peer address, HELO and arrival time of every transaction. A sender domain bound to a pool
is seen only from that pool's addresses, the others from the shared pool; an address capped
at 5 messages per second sends no faster; a new address's day-1 budget holds the 21st
recipient `throttled` while a warm address sends; an address the host does not own is
reported by check-config and at start, and its mail waits or falls back."""
from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer
from tests.integration.test_delivery import send as send_from, wait_for
from tests.mailservers import Receiver
from tests.support import Relay


def send(relay: Relay, sender: str, rcpts: list[str], subject: str = "hello") -> None:
    send_from(relay, rcpts, subject, sender)

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is installed by `make test`")

P1 = ["127.0.8.1", {"address": "127.0.8.2", "helo": "out2.p1.test"}]
SHARED = [{"address": "127.0.8.3", "helo": "shared.test"}]


def by_sender(rx: Receiver) -> dict[str, list[dict[str, Any]]]:
    seen: dict[str, list[dict[str, Any]]] = {}
    for t in rx.transactions():
        seen.setdefault(t["mail_from"].rpartition("@")[2], []).append(t)
    return seen


def egress_relay(make_relay: Callable[..., Relay], rx: Receiver, pools: list[dict[str, Any]],
                 **sections: Any) -> Relay:
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{rx.port}"}},
                        "egress": {"pools": pools}, **sections})
    relay.seed_sender("apps", "bulk.example", ("news@bulk.example",))
    return relay


def test_domains_go_out_from_their_pools_with_their_helo(make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    dns = DnsServer(tmp_path, ("p1.test", "8.0.127.in-addr.arpa", "bulk.example"))
    try:
        dns.publish([("PTR", "1.8.0.127.in-addr.arpa", "out1.p1.test"), ("A", "out1.p1.test", "127.0.8.1"),
                     ("TXT", "bulk.example", "v=spf1 ip4:127.0.8.1 -all")])    # 127.0.8.2 forgotten
        relay = egress_relay(make_relay, rx, [{"name": "p1", "addresses": P1},
                                              {"name": "shared", "addresses": SHARED}],
                             dns={"nameservers": [dns.nameserver], "timeout": "1s"})
        set_ = relay.cli_json("domain", "set", "bulk.example", "--pool", "p1", "--pool-fallback", "none")
        assert (set_["pool"], set_["pool_fallback"], set_["pool_set_on"]) == ("p1", "none", "domain")
        spf = {r["kind"]: r["value"] for r in relay.cli_json("domain", "records", "bulk.example")["records"]}["spf"]
        assert spf == "v=spf1 ip4:127.0.8.1 ip4:127.0.8.2 ~all"           # no fallback: not the shared address
        verify = json.loads(relay.cli("domain", "verify", "bulk.example", "--json", check=False).stdout)
        spf_check = next(r for r in verify["records"] if r["kind"] == "spf")
        assert spf_check["status"] == "fail" and "127.0.8.2: fail" in spf_check["reason"], spf_check
        assert "127.0.8.1" not in spf_check["reason"].partition("for ")[2].split(":")[0]
        relay.start()
        for i in range(12):
            send(relay, "news@bulk.example", [f"n{i}@example.org"], f"bulk {i}")
        for i in range(5):
            send(relay, "app@apps.example", [f"a{i}@example.org"], f"apps {i}")
        wait_for(lambda: len(rx.transactions()) == 17, 30)
        seen = by_sender(rx)
        bulk_peers = Counter(t["peer"] for t in seen["bulk.example"])
        assert set(bulk_peers) == {"127.0.8.1", "127.0.8.2"}, bulk_peers    # both of p1's, nothing else
        assert {t["peer"] for t in seen["apps.example"]} == {"127.0.8.3"}
        helo = {t["peer"]: t["helo"] for t in rx.transactions()}
        assert helo == {"127.0.8.1": "out1.p1.test", "127.0.8.2": "out2.p1.test", "127.0.8.3": "shared.test"}
        # Every attempt names its source: queue show, the status query, the log line, the metric.
        listed = relay.cli_json("queue", "list", "--state", "delivered")["messages"]
        shown = relay.cli_json("queue", "show", listed[0]["id"])
        assert shown["recipients"][0]["history"][0]["source"] in ("127.0.8.1", "127.0.8.2", "127.0.8.3"), shown
        status = relay.cli_json("status", listed[0]["id"])
        assert "127.0.8." in str(status), status
        assert "source=127.0.8.1 (pool p1)" in relay.log() or "source=127.0.8.2 (pool p1)" in relay.log()
        assert relay.metric("smtprelay_deliveries_total", 'result="delivered",pool="p1"') == 12
        assert relay.metric("smtprelay_deliveries_total", 'result="delivered",pool="shared"') == 5
        by_ip = {r["ip"]: r for r in relay.cli_json("stats", "--by", "ip")["days"]}
        assert by_ip["127.0.8.1"]["delivered"] + by_ip["127.0.8.2"]["delivered"] == 12
        assert (by_ip["127.0.8.1"]["pool"], by_ip["127.0.8.3"]["pool"], by_ip["127.0.8.3"]["delivered"]) == \
            ("p1", "shared", 5)
    finally:
        rx.stop()
        dns.stop()


def test_an_address_capped_at_5_per_second_sends_no_faster(make_relay: Callable[..., Relay],
                                                            tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    try:
        relay = egress_relay(make_relay, rx, [{"name": "shared", "addresses": SHARED, "max_rate": 5}]).start()
        for i in range(20):
            send(relay, "app@apps.example", [f"r{i}@example.org"], f"m{i}")
        wait_for(lambda: len(rx.transactions()) == 20, 30)
        times = sorted(t["at"] for t in rx.transactions())
        # Messages start 1/5 s apart: 20 take at least 19 × 0.2 s (a little less at the
        # receiver, whose clock sees each message's end); no second holds more than 5 (+1 at
        # its edge).
        assert times[-1] - times[0] >= 19 * 0.2 * 0.8, times[-1] - times[0]
        assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 6
    finally:
        rx.stop()


def test_a_new_address_holds_the_21st_recipient_while_a_warm_one_sends(make_relay: Callable[..., Relay],
                                                                       tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    try:
        relay = egress_relay(make_relay, rx, [{"name": "p1", "addresses": ["127.0.8.1"]},
                                              {"name": "shared", "addresses": SHARED}],
                             warmup={"enabled": True, "schedule": [1000]},
                             egress={"pools": [{"name": "p1", "addresses": ["127.0.8.1"]},
                                               {"name": "shared", "addresses": SHARED}],
                                     "warmup_schedule": [20, 40]})
        relay.cli_json("domain", "set", "bulk.example", "--pool", "p1", "--pool-fallback", "none")
        # 127.0.8.3 has sent for years: past the last day of the egress schedule.
        assert relay.cli_json("warmup", "set-day", "--ip", "127.0.8.3", "gmail", "3")["cap"] is None
        relay.start()
        send(relay, "news@bulk.example", [f"n{i}@gmail.com" for i in range(25)])
        for i in range(30):
            send(relay, "app@apps.example", [f"a{i}@gmail.com"], f"apps {i}")
        wait_for(lambda: sum(len(t["rcpts"]) for t in rx.transactions()) == 50, 30)
        seen = by_sender(rx)
        assert sum(len(t["rcpts"]) for t in seen["bulk.example"]) == 20
        assert {t["peer"] for t in seen["bulk.example"]} == {"127.0.8.1"}
        assert sum(len(t["rcpts"]) for t in seen["apps.example"]) == 30
        assert {t["peer"] for t in seen["apps.example"]} == {"127.0.8.3"}
        waiting = relay.cli_json("queue", "list", "--state", "throttled")["messages"]
        assert sum(len(m["recipients"]) for m in waiting) == 5
        reply = relay.cli_json("queue", "show", waiting[0]["id"])["recipients"]
        assert any("warm-up budget of 127.0.8.1 at gmail used: day 1 cap 20" in (r["last_reply"] or "")
                   for r in reply), reply
        status = {p["provider"]: p for p in relay.cli_json("warmup", "status", "--ip", "127.0.8.1")["pairs"]}
        assert (status["gmail"]["day"], status["gmail"]["cap"], status["gmail"]["used"],
                status["gmail"]["remaining"], status["gmail"]["pool"]) == (1, 20, 20, 0, "p1")
        wait_for(lambda: relay.metric("smtprelay_warmup_remaining", 'provider="gmail",ip="127.0.8.1"') == 0.0
                 and relay.metric("smtprelay_warmup_remaining", 'provider="gmail",ip="127.0.8.3"') == float("inf"),
                 20)
        # With the shared pool as fallback, what p1 cannot send goes out from the warm address.
        relay.cli_json("domain", "set", "bulk.example", "--pool-fallback", "shared")
        send(relay, "news@bulk.example", ["late@gmail.com"], "late")
        wait_for(lambda: any(t["rcpts"] == ["late@gmail.com"] for t in rx.transactions()), 20)
        assert [t["peer"] for t in rx.transactions() if t["rcpts"] == ["late@gmail.com"]] == ["127.0.8.3"]
    finally:
        rx.stop()


def test_an_address_the_host_does_not_own(make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    try:
        relay = egress_relay(make_relay, rx, [{"name": "p1", "addresses": ["192.0.2.10"]},
                                              {"name": "shared", "addresses": SHARED}])
        checked = relay.cli("check-config")
        assert checked.returncode == 0
        assert 'egress pool "p1": 192.0.2.10 is not an address of this host' in checked.stderr
        relay.cli_json("domain", "set", "bulk.example", "--pool", "p1", "--pool-fallback", "none")
        relay.cli_json("account", "set", "apps", "--pool", "p1")        # fallback: shared (the default)
        relay.start()
        assert "192.0.2.10 is not an address of this host" in relay.wait_for_log("egress pool p1")
        send(relay, "news@bulk.example", ["stuck@example.org"], "stuck")
        send(relay, "app@apps.example", ["moved@example.org"], "moved")
        wait_for(lambda: len(rx.transactions()) == 1, 20)
        assert rx.transactions()[0]["rcpts"] == ["moved@example.org"] and rx.transactions()[0]["peer"] == "127.0.8.3"
        wait_for(lambda: relay.cli_json("queue", "list", "--state", "throttled")["messages"], 20)
        stuck = relay.cli_json("queue", "list", "--state", "throttled")["messages"]
        reply = relay.cli_json("queue", "show", stuck[0]["id"])["recipients"][0]["last_reply"]
        assert "no address of egress pool p1 can send now (fallback: none)" in reply, reply
        assert "192.0.2.10 is not an address of this host" in reply
        # The operator gives p1 an address the host owns and reloads: the waiting mail goes out now.
        relay.doc["egress"]["pools"][0]["addresses"] = ["127.0.8.4"]
        relay.write_config()
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(rx.transactions()) == 2, 20)
        assert [t["peer"] for t in rx.transactions() if t["rcpts"] == ["stuck@example.org"]] == ["127.0.8.4"]
    finally:
        rx.stop()
