"""The web console in a real browser (issue 21): Debian's headless Chromium driven by
Playwright, against a running relay with `[console] enabled`, its DNS from a dnsmasq the test
starts. One browser for the module; each test gets its own context (cookies) and saves a
screenshot under its output directory when it fails."""
from __future__ import annotations

import email
import re
import shutil
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer, records_from_cli
from tests.integration.test_domains import dns  # noqa: F401 (the fixture: a dnsmasq for the test's zones)
from tests.integration.test_delivery import wait_for
from tests.mailservers import Receiver
from tests.support import Relay, client_tls, free_port, queued_id

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by `make test`")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    # A zone that is not UTC: times the user types or reads are the browser's local time.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/Paris")
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        pg.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}")
    context.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(tmp_path).start()
    yield rx
    rx.stop()


def console_relay(make_relay: Callable[..., Relay], dns: DnsServer, mx_port: int | None = None) -> Relay:
    relay = make_relay({"server": {"public_ips": ["127.0.0.1"]}, "console": {"enabled": True},
                        "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
                        "delivery": {"routes": {"*": f"127.0.0.1:{mx_port or free_port()}"}}}, seed=False)
    relay.cli("account", "add", "acme")
    relay.cli("account", "add", "rival")
    return relay


def user(relay: Relay, name: str, role: str, *extra: str) -> str:
    return relay.cli_json("console-user", "add", name, "--role", role, *extra)["password"]


def submit(relay: Relay, cred: dict[str, str], sender: str, rcpt: str) -> str:
    """One message through the STARTTLS submission listener with a credential made before start.
    A sender address added a moment ago reaches the front-end workers within 2 s (README): until
    then MAIL is refused, and the message is offered again."""
    answers: list[tuple[int, bytes]] = []

    def sent() -> bool:
        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
            s.starttls(context=client_tls())
            s.login(cred["username"], cred["password"])
            code, text = s.mail(sender)
            if code != 250:
                assert b"is not registered" in text, text
                return False
            assert s.rcpt(rcpt)[0] == 250
            answers.append(s.data(f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nHello.\r\n".encode()))
        return True
    wait_for(sent, 10)
    code, reply = answers[0]
    assert code == 250, reply
    return queued_id(reply)


def login(page: Any, relay: Relay, name: str, password: str) -> None:
    page.goto(f"http://127.0.0.1:{relay.http_port}/console/")
    assert page.url.endswith("/console/login")
    page.get_by_label("User").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/console/$"))


def test_add_a_domain_see_its_records_verify_it_and_manage_addresses(make_relay: Callable[..., Relay],
                                                                    dns: DnsServer, page: Any,
                                                                    receiver: Receiver) -> None:
    relay = console_relay(make_relay, dns, receiver.port)
    password = user(relay, "ops", "admin")
    cred = relay.cli_json("credential", "add", "acme")
    relay.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    login(page, relay, "ops", password)
    assert page.locator("#health").inner_text().startswith("Store: ok")
    assert page.locator('[data-count="delivered"] .n').inner_text() == "0"

    page.get_by_role("link", name="Sender domains").click()
    page.get_by_label("Account").select_option("acme")
    page.get_by_label("Domain").fill("not a domain")
    page.get_by_role("button", name=re.compile("Add and make")).click()
    assert page.locator("#domain-error").inner_text() == '"not a domain" is not a valid domain name'
    assert page.get_by_label("Domain").get_attribute("aria-describedby") == "domain-error"
    page.get_by_label("Domain").fill("example.com")
    page.get_by_role("button", name=re.compile("Add and make")).click()
    page.wait_for_url(base + "/console/domains/example.com")
    assert page.locator("#status").inner_text() == "pending"
    kinds = page.locator("#records tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds[0] == "dkim" and {"spf", "dmarc", "mx", "bounce_spf"} <= set(kinds)
    # What the page shows is what `domain records` prints, value for value.
    shown = page.locator("#records code.value").all_inner_texts()
    assert shown == [r["value"] for r in relay.cli_json("domain", "records", "example.com")["records"]]

    # "Verify now" against the test's DNS: nothing published → failing checks named per record.
    page.get_by_role("button", name="Verify now").click()
    assert page.locator("#verification").inner_text().startswith("Checked now: pending")
    assert page.locator('#records tr[data-kind="spf"] td.check').inner_text().startswith("missing")
    dns.publish(records_from_cli(relay.cli_json("domain", "records", "example.com")))
    page.get_by_role("button", name="Verify now").click()
    assert page.locator("#status").inner_text() == "verified"
    assert "(was pending)" in page.locator("#verification").inner_text()
    assert page.locator('#records tr[data-kind="dkim"] td.check').inner_text().startswith("pass")
    assert relay.cli_json("domain", "list")["domains"][0]["status"] == "verified"

    # Addresses: one outside the domain is refused next to the field; one inside is added.
    page.get_by_label("Address", exact=True).fill("news@other.example")
    page.get_by_role("button", name="Add address").click()
    assert "must be at example.com" in page.locator("#address-error").inner_text()
    page.get_by_label("Address", exact=True).fill("news@example.com")
    page.get_by_label("Display name (optional)").fill("Example News")
    page.get_by_role("button", name="Add address").click()
    assert "news@example.com" in page.locator("#address-list").inner_text()
    assert [a["address"] for a in relay.cli_json("address", "list")["addresses"]] == ["news@example.com"]

    # Mail from that address is found in message search, with its delivery.
    qid = submit(relay, cred, "news@example.com", "friend@example.org")
    wait_for(lambda: relay.cli_json("status", qid)["recipients"][0]["state"] == "delivered")
    page.get_by_role("link", name="Messages").click()
    page.get_by_label("Queue id or Message-ID").fill(qid)
    page.get_by_role("button", name="Find").click()
    row = page.locator('#recipients tr[data-recipient="friend@example.org"]')
    assert row.locator("td.state").inner_text() == "delivered"
    assert re.search(r"delivered via 127\.0\.0\.1\[127\.0\.0\.1\]:\d+", row.inner_text())
    assert "accepted" in row.locator("ul.events").inner_text() and "delivered" in row.locator("ul.events").inner_text()
    page.get_by_label("Recipient").fill("friend@example.org")
    page.get_by_role("button", name="Search").click()
    assert page.locator("#found tbody tr").count() == 1 and qid in page.locator("#found").inner_text()
    page.get_by_label("From (date, time or 7d)").fill("last tuesday")
    page.get_by_role("button", name="Search").click()
    assert page.locator("#from-error").is_visible()
    page.goto(base + "/console/messages?q=NOSUCHID")
    assert page.locator("#q-error").inner_text() == "No message NOSUCHID."

    page.goto(base + "/console/domains/example.com")
    page.get_by_role("button", name="Delete news@example.com").click()
    assert "No sender address yet" in page.locator("#address-list").inner_text()

    # At a phone's width the records stay readable: no horizontal scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.set_viewport_size({"width": 1280, "height": 900})
    # Times are shown in the browser's zone, UTC on hover.
    page.goto(base + "/console/domains")
    assert page.locator("#domains time").first.get_attribute("title").endswith("UTC")
    # Log out: the cookie no longer opens a page.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(base + "/console/login")
    page.goto(base + "/console/domains")
    assert page.url.endswith("/console/login")


def test_account_scope_csrf_read_only_and_lockout(make_relay: Callable[..., Relay], dns: DnsServer,
                                                 page: Any) -> None:
    relay = console_relay(make_relay, dns)
    relay.seed_sender("acme", "example.com", ())
    relay.seed_sender("rival", "example.org", ("r@example.org",))
    acme = user(relay, "alice", "account:acme")
    viewer = user(relay, "vic", "account:acme", "--read-only")
    rival = relay.cli_json("credential", "add", "rival")
    relay.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    rival_mail = submit(relay, rival, "r@example.org", "someone@example.com")

    login(page, relay, "alice", acme)
    page.get_by_role("link", name="Sender domains").click()
    assert page.locator("#domains tbody").inner_text().split()[0] == "example.com"
    assert "example.org" not in page.locator("#domains").inner_text()
    # Another account's domain is exactly as unknown as one that does not exist.
    response = page.goto(base + "/console/domains/example.org")
    assert response.status == 404 and "No sender domain example.org" in page.content()
    assert page.goto(base + "/console/domains/nowhere.example").status == 404
    # Another account's mail is not found by its queue id, nor by its recipient.
    page.goto(base + f"/console/messages?q={rival_mail}")
    assert page.locator("#q-error").inner_text() == f"No message {rival_mail}." and page.locator("#message").count() == 0
    page.goto(base + "/console/messages?recipient=someone@example.com")
    assert page.locator("#found tbody").inner_text().startswith("No mail to someone@example.com")
    # Its forms too: a POST for the rival's domain with a valid token changes nothing.
    csrf = page.goto(base + "/console/domains/example.com").ok and \
        page.locator('#verify input[name="csrf"]').get_attribute("value")
    refused = page.request.post(base + "/console/domains/example.org/addresses",
                                form={"csrf": csrf, "address": "x@example.org"})
    assert refused.status == 404 and [a["address"] for a in relay.cli_json("address", "list")["addresses"]] == [
        "r@example.org"]
    # A form posted without the CSRF token (or with another one) is refused.
    assert page.request.post(base + "/console/domains/example.com/addresses",
                             form={"address": "a@example.com"}).status == 403
    assert page.request.post(base + "/console/domains/example.com/addresses",
                             form={"csrf": "forged", "address": "a@example.com"}).status == 403
    assert [a["address"] for a in relay.cli_json("address", "list")["addresses"]] == ["r@example.org"]
    # The cookie is HttpOnly and SameSite=Strict, scoped to /console.
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"

    # A read-only user sees, and its POSTs are refused even with a valid token.
    page.context.clear_cookies()
    login(page, relay, "vic", viewer)
    page.goto(base + "/console/domains/example.com")
    assert page.get_by_role("button", name="Verify now").count() == 0
    token = page.locator('form.who input[name="csrf"]').get_attribute("value")
    assert page.request.post(base + "/console/domains/example.com/verify", form={"csrf": token}).status == 403

    # Wrong passwords: after auth.max_failures (5) the address is locked out, right password or not.
    page.context.clear_cookies()
    page.goto(base + "/console/login")
    for _ in range(5):
        page.get_by_label("User").fill("alice")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        assert "wrong password" in page.locator("#password-error").inner_text()
    page.get_by_label("User").fill("alice")
    page.get_by_label("Password").fill(acme)
    page.get_by_role("button", name="Log in").click()
    assert "Too many failed logins" in page.locator("#password-error").inner_text()
    assert page.url.endswith("/console/login")


def test_console_users_from_the_cli_and_the_console_off_by_default(make_relay: Callable[..., Relay]) -> None:
    import urllib.error
    import urllib.request
    relay = make_relay({"http": {"admin_token": "s3cret-token"}})
    relay.cli("account", "add", "acme")
    doc = relay.cli_json("console-user", "add", "ops@example.com", "--role", "admin")
    assert len(doc["password"]) == 32 and doc["role"] == "admin" and doc["read_only"] is False
    assert relay.cli("console-user", "add", "ops@example.com", "--role", "admin", check=False).returncode == 1
    missing = relay.cli("console-user", "add", "bob", "--role", "account:nobody", check=False)
    assert missing.returncode == 1 and "no account nobody" in missing.stderr
    relay.cli("console-user", "add", "bob", "--role", "account:acme", "--read-only")
    listed = {u["name"]: u for u in relay.cli_json("console-user", "list")["users"]}
    assert listed["bob"]["role"] == "account:acme" and listed["bob"]["read_only"] is True
    assert "password" not in listed["bob"]
    with relay.db() as conn:   # only a digest is kept
        digests = [r[0] for r in conn.execute("SELECT password_digest FROM console_users")]
    assert all(d.startswith("sha256$") and doc["password"] not in d for d in digests)
    assert relay.cli_json("console-user", "password", "bob")["password"] != doc["password"]
    assert relay.cli_json("console-user", "delete", "bob") == {"deleted": "bob"}
    assert relay.cli("console-user", "delete", "bob", check=False).returncode == 1
    # Without [console] enabled there is no console; the admin API answers as before.
    relay.start()
    with pytest.raises(urllib.error.HTTPError) as off:
        urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/console/login", timeout=10)
    assert off.value.code == 404
    from tests.integration.test_admin_api import call
    status, domain = call(relay, "GET", "/domains/example.com")
    assert status == 200 and domain["account"] == "acme" and domain["status"] == "verified"
    assert call(relay, "GET", "/domains/nowhere.example")[0] == 404


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def rcpt_reply(relay: Relay, cred: dict[str, str], sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.login(cred["username"], cred["password"])
        assert s.mail(sender)[0] == 250
        return s.rcpt(rcpt)


def download(page: Any, link: Any) -> str:
    with page.expect_download() as info:
        link.click()
    return Path(info.value.path()).read_text()


def test_statistics_blocklist_and_queue(make_relay: Callable[..., Relay], dns: DnsServer, page: Any,
                                        receiver: Receiver) -> None:
    relay = console_relay(make_relay, dns, receiver.port)
    relay.doc["delivery"]["routes"]["deferred.example"] = f"127.0.0.1:{free_port()}"   # nothing listens
    relay.doc["egress"] = {"pools": [{"name": "news", "addresses": [{"address": "127.0.0.1"}]}]}
    relay.write_config()
    relay.seed_sender("acme", "example.com", ("news@example.com",))
    password = user(relay, "ops", "admin")
    cred = relay.cli_json("credential", "add", "acme")
    relay.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    qid = submit(relay, cred, "news@example.com", "friend@example.org")
    wait_for(lambda: relay.cli_json("status", qid)["recipients"][0]["state"] == "delivered")
    login(page, relay, "ops", password)
    quota = relay.cli_json("explain", "--account", "acme", "--from", "news@example.com", "--to", "friend@example.org")["policies"]
    [daily] = [p for p in quota if p["policy"] == "account daily quota"]
    row = page.locator('#usage tr[data-account="acme"] td').all_inner_texts()
    assert row[1:4] == ["1", str(daily["quota"]), str(daily["quota"] - 1)] and daily["used"] == 1

    # Statistics: the chart has a point for today, read from the chart's own data.
    page.get_by_role("link", name="Statistics").click()
    expect(page.locator("#chart canvas")).to_have_count(1)       # uPlot drew it
    today = relay.cli_json("stats")["days"][-1]["day"]
    days = page.evaluate("window.smtprelayStats.days")
    assert days[-1] == today and len(days) == 7
    chart = page.evaluate("window.smtprelayChart.data")       # [x, requests, delivered, ...] as uPlot holds it
    labels = page.evaluate("window.smtprelayChart.series.map(s => s.label)")
    assert chart[labels.index("Delivered")][-1] == 1 and chart[labels.index("Requests")][-1] == 1
    assert chart[0][-1] == page.evaluate(f"Date.parse('{today}T00:00:00Z') / 1000")
    assert page.locator("#chart canvas").count() == 1
    row = page.locator(f'#stats-table tr[data-day="{today}"]').inner_text().split()
    assert row[1:3] == ["1", "1"]
    text = download(page, page.get_by_role("link", name="Download CSV"))
    header, *rows = [line.split(",") for line in text.splitlines()]
    assert header[:5] == ["day", "sender_domain", "recipient_domain", "tag", "template"]
    [mine] = [r for r in rows if r[0] == today]
    assert mine[1:3] == ["example.com", "example.org"] and mine[header.index("delivered")] == "1"
    # Filters: another sender domain has nothing; a bad date is named next to its field.
    page.get_by_label("Sender domain").fill("elsewhere.example")
    page.get_by_role("button", name="Show").click()
    assert page.evaluate("window.smtprelayStats.series.every(s => s.values.every(v => v === 0))")
    page.goto(base + "/console/stats?from=yesterday")
    assert "a date like" in page.locator("#from-error").inner_text()

    # Blocklist: block an address and see the next RCPT refused; remove it and it is accepted.
    page.get_by_role("link", name="Blocklist").click()
    page.get_by_label("Address", exact=True).nth(1).fill("blocked@example.org")
    page.get_by_label("Note").fill("asked by phone")
    page.get_by_role("button", name="Block", exact=True).click()
    assert "blocked@example.org is blocked for all accounts" in page.locator("#done").inner_text()
    assert "asked by phone" in page.locator("#block-entries").inner_text()
    refused: list[tuple[int, bytes]] = []
    wait_for(lambda: refused.append(rcpt_reply(relay, cred, "news@example.com", "blocked@example.org"))
             or refused[-1][0] == 550, 10)
    assert b"5.7.1" in refused[-1][1] or b"5.1.1" in refused[-1][1], refused[-1]
    page.get_by_role("button", name="Remove blocked@example.org (custom)").click()
    assert "Removed 1 entry for blocked@example.org" in page.locator("#done").inner_text()
    wait_for(lambda: rcpt_reply(relay, cred, "news@example.com", "blocked@example.org")[0] == 250, 10)
    # Search by type; import a CSV with a bad row: the line is named; export reads it back.
    page.set_input_files("#csv", files=[{"name": "block.csv", "mimeType": "text/csv", "buffer":
                                         b"address,type,account,note\nok@example.net,custom,acme,from csv\n"
                                         b"not an address,custom,,\n"}])
    page.get_by_role("button", name="Import").click()
    report = page.locator("#import-report").inner_text()
    assert "Imported 1; 1 bad row(s)" in report and "line 3:" in report
    exported = download(page, page.get_by_role("link", name="Export CSV"))
    assert "ok@example.net,custom,acme,,,from csv" in exported.splitlines()
    page.get_by_label("Type").select_option("invalid")
    page.get_by_role("button", name="Search").click()
    assert "No entry matches" in page.locator("#block-entries").inner_text()

    # Queue: a deferred message can be held, released and deleted.
    stuck = submit(relay, cred, "news@example.com", "x@deferred.example")
    wait_for(lambda: relay.cli_json("status", stuck)["recipients"][0]["state"] == "deferred")
    page.get_by_role("link", name="Queue").click()
    listed = page.locator(f'#queue-list tr[data-id="{stuck}"]')
    assert "deferred" in listed.inner_text() and "x@deferred.example" in listed.inner_text()
    page.get_by_role("button", name=f"Hold {stuck}").click()
    assert f"{stuck}: 1 recipient(s) held" in page.locator("#done").inner_text()
    assert relay.cli_json("status", stuck)["recipients"][0]["state"] == "hold"
    page.get_by_role("button", name=f"Release {stuck}").click()
    assert relay.cli_json("status", stuck)["recipients"][0]["state"] == "deferred"
    page.get_by_role("button", name="Retry deferred mail now").click()
    assert "due now" in page.locator("#done").inner_text()
    page.get_by_role("button", name=f"Delete {stuck}").click()
    assert "deleted" in page.locator("#done").inner_text()
    assert page.locator(f'#queue-list tr[data-id="{stuck}"]').count() == 0

    # Warm-up and webhooks pages answer with their tables; a secret is shown once asked.
    page.get_by_role("link", name="Warm-up").click()
    assert page.locator("#warmup-pairs").count() == 1
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("Account").first.select_option("acme")
    page.get_by_label("URL").fill("https://hooks.example.com/in")
    page.get_by_role("button", name="Save").click()
    assert "go to https://hooks.example.com/in" in page.locator("#done").inner_text()
    assert relay.cli_json("webhook", "list")["webhooks"][0]["url"] == "https://hooks.example.com/in"
    page.get_by_role("button", name="Show").click()
    assert len(page.locator("#secret-value").inner_text()) >= 32
    # The operator binds the domain to an egress pool from its page.
    page.goto(base + "/console/domains/example.com")
    page.get_by_label(re.compile(r"^Pool \(now shared")).select_option("news")
    page.get_by_role("button", name="Save pool").click()
    assert "goes out from pool news" in page.locator("#done").inner_text()
    assert relay.cli_json("domain", "list")["domains"][0]["pool"] == "news"
    # At a phone's width no page scrolls sideways as a whole (wide tables scroll in their box).
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/console/stats", "/console/blocklist", "/console/queue", "/console/webhooks"):
        page.goto(base + path)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path


def new_task(page: Any, when: str) -> None:
    """The tasks page's form: group friends, template welcome, first run 2099-01-02 09:30 local."""
    page.get_by_label("Recipient group").select_option(label="friends · 2")
    page.get_by_label("Template", exact=True).select_option(label="welcome")
    page.get_by_label("From", exact=True).fill("news@example.com")
    page.get_by_label(when).check()
    page.get_by_label("First run (your local time)").fill("2099-01-02T09:30")
    page.get_by_role("button", name="Create task").click()


def test_templates_groups_and_tasks(make_relay: Callable[..., Relay], dns: DnsServer, page: Any,
                                    receiver: Receiver) -> None:
    relay = console_relay(make_relay, dns, receiver.port)
    relay.seed_sender("acme", "example.com", ("news@example.com",))
    relay.seed_sender("rival", "example.org", ("r@example.org",))
    password = user(relay, "alice", "account:acme")
    relay.start()
    base = f"http://127.0.0.1:{relay.http_port}"
    (relay.dir / "t.html").write_text("<p>x</p>")
    rival_template = relay.cli_json("template", "add", "rival", "secret", "--html", str(relay.dir / "t.html"),
                                    "--subject", "x")["id"]
    login(page, relay, "alice", password)

    # A template, then its editor's live preview with sample data and the check's findings.
    page.get_by_role("link", name="Templates").click()
    page.get_by_label("Name").fill("welcome")
    page.get_by_label("Subject").fill("Hi {{first_name}}")
    page.get_by_label("HTML part").fill("<p>Hello {{first_name}}, <b>welcome</b>.</p>")
    page.get_by_role("button", name=re.compile("Add, then edit")).click()
    page.wait_for_url(re.compile(r"/console/templates/\d+$"))
    expect(page.locator("#preview-subject")).to_have_text("Hi first_name")
    page.get_by_label("Sample data for the preview (JSON)").fill('{"first_name": "Ada"}')
    expect(page.locator("#preview-subject")).to_have_text("Hi Ada")
    frame = page.frame_locator("#preview-html")
    assert frame.locator("b").inner_text() == "welcome" and "Hello Ada" in frame.locator("p").inner_text()
    assert page.locator("#findings li").count() >= 1
    page.get_by_label("Sample data for the preview (JSON)").fill("{not json")
    expect(page.locator("#data-error")).to_contain_text("not JSON")
    page.get_by_label("HTML part").fill("<p>Hello {{first_name}}, <b>welcome aboard</b>.</p>")
    page.get_by_role("button", name="Save as a new version").click()
    assert "Saved as version 2" in page.locator("#done").inner_text()
    assert relay.cli_json("template", "show", "welcome")["version"] == 2
    assert page.goto(base + f"/console/templates/{rival_template}").status == 404

    # Groups: the sample, a CSV with a bad row (its line is named next to the field), then a good one.
    page.goto(base + "/console/groups")
    assert download(page, page.get_by_role("link", name="Download a sample")).startswith("email,first_name")
    page.get_by_label("Name").fill("friends")
    page.set_input_files("#csv", files=[{"name": "friends.csv", "mimeType": "text/csv", "buffer":
                                         b"email,first_name\nada@example.net,Ada\nnot-an-address,Bob\n"}])
    page.get_by_role("button", name="Upload").click()
    assert "line 3" in page.locator("#csv-error").inner_text()
    assert page.get_by_label("CSV file").get_attribute("aria-describedby") == "csv-error"
    assert relay.cli_json("group", "list")["groups"] == []
    page.get_by_label("Name").fill("friends")
    page.set_input_files("#csv", files=[{"name": "friends.csv", "mimeType": "text/csv", "buffer":
                                         b"email,first_name\nada@example.net,Ada\ngrace@example.net,Grace\n"}])
    page.get_by_role("button", name="Upload").click()
    assert "Group friends: 2 recipient(s)" in page.locator("#done").inner_text()

    # A task now: it runs, its page shows the progress, the mail is rendered per row.
    page.get_by_role("link", name="Tasks").click()
    page.get_by_label("Recipient group").select_option(label="friends · 2")
    page.get_by_label("Template", exact=True).select_option(label="welcome")
    page.get_by_label("From", exact=True).fill("News <news@example.com>")
    page.get_by_role("button", name="Create task").click()
    page.wait_for_url(re.compile(r"/console/tasks/\d+$"))
    task_id = page.url.rsplit("/", 1)[1]

    def finished() -> bool:
        page.reload()
        return page.locator("#task-status").inner_text() == "finished"
    wait_for(finished, 30)
    assert page.locator("progress").first.get_attribute("value") == "100.0"
    wait_for(lambda: len(receiver.transactions()) == 2, 20)
    subjects = sorted(email.message_from_bytes(t["data"])["Subject"] for t in receiver.transactions())
    assert subjects == ["Hi Ada", "Hi Grace"]
    page.get_by_role("link", name="Tasks").click()
    assert f"#{task_id}" in page.locator("#task-list").inner_text()
    # A scheduled task, typed in the browser's local time: it waits; pause, resume and cancel it.
    new_task(page, "once, at")
    page.wait_for_url(re.compile(r"/console/tasks/\d+$"))
    later = relay.cli_json("task", "show", page.url.rsplit("/", 1)[1])
    assert later["status"] == "scheduled" and later["first_at"] == "2099-01-02T08:30:00Z"    # 09:30 in Paris
    when = page.locator("dl.facts time").first
    assert when.get_attribute("title") == "2099-01-02 08:30:00 UTC" and "9:30" in when.inner_text()
    page.get_by_role("button", name="Pause").click()
    assert page.locator("#task-status").inner_text() == "paused"
    page.get_by_role("button", name="Resume").click()
    assert page.locator("#task-status").inner_text() == "scheduled"
    page.get_by_role("button", name="Cancel").click()
    assert page.locator("#task-status").inner_text() == "cancelled"
    # A recurring task without its period is refused next to the field.
    page.get_by_role("link", name="Tasks").click()
    new_task(page, "at, then every")
    assert page.locator("#every-error").inner_text() == "give the period, like 7d"
    # Another account's task and group are not found.
    assert page.goto(base + "/console/groups/999").status == 404
