"""Tracking and unsubscribe as a tenant meets them, through the relay process: per-recipient
copies with their own tokens (signed), an open and a click through the endpoints, a forged
link refused, and a one-click unsubscribe followed by a send to that address."""
from __future__ import annotations

import email
import email.policy
import http.client
import re
import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_delivery import wait_for
from tests.mailservers import Receiver
from tests.support import Relay

HTML = (b"From: app@apps.example\r\nSubject: news\r\nX-Smtprelay-Tag: spring\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello https://shop.example/sale\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p><a href=\"https://shop.example/sale\">Sale</a></p></body></html>\r\n--b--\r\n")


def get(relay: Relay, path: str, method: str = "GET", body: bytes | None = None,
        agent: str = "Mozilla/5.0 (X11; Linux x86_64)") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", relay.http_port, timeout=10)
    conn.request(method, path, body=body, headers={"User-Agent": agent,
                                                   "Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    resp.read()
    return resp


def test_open_click_and_one_click_unsubscribe(make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    rx = Receiver(tmp_path).start()
    try:
        relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{rx.port}"}}})
        relay.doc["tracking"] = {"base_url": f"http://127.0.0.1:{relay.http_port}", "machine_window": "1ms"}
        relay.write_config()
        relay.cli("account", "add", "apps")          # (the relay would create it at start)
        relay.cli("tracking", "set", "--account", "apps", "--opens", "on", "--clicks", "on", "--unsubscribe", "on")
        assert relay.cli_json("tracking", "show")["settings"][0]["clicks"] is True
        shown = relay.cli("tracking", "show").stdout          # words, not Python values (issue 23, item 17)
        assert "None" not in shown and "True" not in shown and "False" not in shown
        assert shown.splitlines()[-1].split() == ["apps", "(all)", "on", "on", "on"]
        relay.start()
        with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
            assert s.sendmail("app@apps.example", ["a@d.test", "b@d.test"], HTML) == {}
        wait_for(lambda: len(rx.transactions()) == 2)
        copies = {t["rcpts"][0]: t["data"] for t in rx.transactions()}
        assert all(len(t["rcpts"]) == 1 for t in rx.transactions())          # one copy per recipient
        a = copies["a@d.test"]
        assert a != copies["b@d.test"]
        msg = email.message_from_bytes(a, policy=email.policy.default)
        signed = msg["DKIM-Signature"].replace("\r\n", "").replace(" ", "").replace("\t", "")
        assert "list-unsubscribe" in signed.lower()                          # added before signing
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_content()
        assert "hello https://shop.example/sale" in text
        pixel = re.search(r'src="http://127\.0\.0\.1:\d+(/t/o/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        click = re.search(r'href="http://127\.0\.0\.1:\d+(/t/c/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        unsub = re.search(r"<http://127\.0\.0\.1:\d+(/u/[^>]+)>", msg["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]

        opened = get(relay, pixel)
        assert opened.status == 200 and opened.getheader("Content-Type") == "image/gif"
        assert get(relay, pixel, agent="YahooMailProxy; https://help.yahoo.com").status == 200   # a prefetcher
        followed = get(relay, click)
        assert followed.status == 302 and followed.getheader("Location") == "https://shop.example/sale"
        token = click.rsplit("/", 1)[1]
        tampered = click[:-len(token)] + token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert get(relay, tampered).status == 404                          # never an open redirect
        page = get(relay, unsub)
        assert page.status == 200                                          # GET only asks
        with relay.db() as conn:
            assert conn.execute("SELECT count(*) FROM blocklist WHERE type = 'reject'").fetchone()[0] == 0
        assert get(relay, unsub, "POST", b"List-Unsubscribe=One-Click").status == 200
        with relay.db() as conn:
            entry = conn.execute("SELECT address, sender_domain FROM blocklist WHERE type = 'reject'").fetchall()
        assert entry == [("a@d.test", "apps.example")]

        def refused() -> bool:
            with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
                s.ehlo()
                s.mail("app@apps.example")
                code, text = s.rcpt("a@d.test")
                return code == 550 and b"5.7.1" in text
        assert refused()          # at once, not after the next poll (issue 23, item 1): no waiting

        def counted() -> bool:
            day = next((d for d in relay.cli_json("stats")["days"] if d["tag"] == "spring"), None)
            return day is not None and (day["opened"], day["opened_machine"], day["clicked"],
                                        day["clicked_unique"], day["unsubscribed"]) == (1, 1, 1, 1, 1)
        wait_for(counted)
        days = relay.cli_json("stats")["days"]
        # The unsubscribe carries the message's tag like its opens and deliveries (issue 23.5): one
        # tagged row. The refused RCPT above is a `rejected` event with no tag (refused before
        # DATA): its own row, if the back end has written it yet, with nothing else in it.
        by_tag = {d["tag"]: d for d in days}
        assert set(by_tag) <= {"spring", None} and by_tag["spring"]["unsubscribed"] == 1
        if None in by_tag:
            assert by_tag[None]["rejected"] == 1 and by_tag[None]["delivered"] == by_tag[None]["unsubscribed"] == 0
        day = by_tag["spring"]
        assert day["open_rate"] == 0.5 and day["delivered"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}{pixel}x", timeout=5) as r:
            assert r.status == 200                                         # a broken token still gets a pixel
    finally:
        rx.stop()
