"""The admin API as an integrator meets it: token auth, JSON in and out, the same operations
(and answers) as the CLI, clear errors, and an OpenAPI document listing them."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.integration.test_delivery import send
from tests.support import Relay


def call(relay: Relay, method: str, path: str, body: Any = None, token: str | None = "s3cret-token") -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}/api/v1{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_admin_api_runs_the_cli_operations(make_relay: Callable[..., Relay]) -> None:
    relay = make_relay({"http": {"admin_token": "s3cret-token"}}).start()
    assert call(relay, "GET", "/accounts", token=None)[0] == 401
    assert call(relay, "GET", "/accounts", token="wrong")[0] == 401
    status, doc = call(relay, "POST", "/accounts", {"name": "beta", "daily_quota": 900})
    assert status == 200 and doc["name"] == "beta" and doc["daily_quota"] == 900
    assert call(relay, "GET", "/accounts")[1] == relay.cli_json("account", "list")   # one implementation
    status, cred = call(relay, "POST", "/accounts/beta/credentials")
    assert status == 200 and cred["username"].startswith("beta-") and len(cred["password"]) == 32
    status, dom = call(relay, "POST", "/domains", {"account": "beta", "domain": "beta.example"})
    assert status == 200 and dom["status"] == "pending" and any(r["kind"] == "dkim" for r in dom["records"])
    assert call(relay, "GET", "/domains/beta.example/records")[1]["domain"] == "beta.example"
    assert call(relay, "POST", "/addresses", {"address": "hi@beta.example"})[1]["account"] == "beta"
    assert call(relay, "PATCH", "/accounts/beta", {"rate": 5})[1]["rate_per_second"] == 5.0

    qid = send(relay, ["friend@d.test"])
    status, doc = call(relay, "GET", f"/status/{qid}")
    assert status == 200 and doc["id"] == qid and doc["recipients"][0]["events"][0]["type"] == "accepted"
    assert call(relay, "GET", "/queue")[1]["messages"][0]["id"] == qid
    assert call(relay, "POST", f"/queue/{qid}/hold")[1]["held"] == 1
    assert [m["id"] for m in call(relay, "GET", "/queue?state=hold")[1]["messages"]] == [qid]
    assert call(relay, "GET", "/stats")[0] == 200
    assert call(relay, "GET", "/warmup")[1]["enabled"] is False
    assert call(relay, "POST", "/blocklist", {"address": "x@y.test", "note": "api"})[0] == 200
    assert call(relay, "GET", "/blocklist/x@y.test")[0] == 200
    hook = call(relay, "PUT", "/webhooks", {"url": "http://127.0.0.1:9/cb", "account": "beta"})[1]
    assert hook["secret"].startswith("whsec_")

    status, doc = call(relay, "GET", "/accounts/nope/credentials")
    assert status == 404 and 'no account named "nope"' in doc["error"]
    status, doc = call(relay, "POST", "/accounts", {"name": "beta"})
    assert status == 409 and "already exists" in doc["error"]
    status, doc = call(relay, "POST", "/accounts", {"name": "gamma", "colour": "blue"})
    assert status == 400 and doc["field"] == "colour" and "unknown field: colour" in doc["error"]
    status, doc = call(relay, "POST", "/accounts", {"daily_quota": 5})
    assert status == 400 and doc["field"] == "name" and "\"name\" is required" in doc["error"]
    status, doc = call(relay, "GET", "/stats?from=yesterday")
    assert status == 400 and doc["field"] == "from" and "is neither a date like 2026-12-31" in doc["error"]

    status, spec = call(relay, "GET", "/openapi.json", token=None)
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/accounts", "/domains/{domain}/verify", "/warmup", "/webhooks", "/stats", "/status/{queue_id}"} <= \
        set(spec["paths"])
    assert spec["paths"]["/accounts"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"] == ["name"]


def test_the_admin_api_is_off_without_a_token(relay: Relay) -> None:
    status, doc = call(relay, "GET", "/accounts")
    assert status == 403 and "set http.admin_token" in doc["error"]


def test_api_errors_name_the_field_and_every_answer_is_json(make_relay: Callable[..., Relay]) -> None:
    """Issue 15: errors are mapped once from the services' kinds — 400 names the field, 404 for
    a missing object or an unknown route, 405 for a known path with another method, 409 for a
    refusal — and the OpenAPI document is typed from the same route table."""
    relay = make_relay({"http": {"admin_token": "s3cret-token"}}).start()
    assert call(relay, "POST", "/accounts", {"name": "beta"})[0] == 200

    cases = [
        ("POST", "/accounts", {"name": "Not Valid"}, 400, "name"),               # the service's rule
        ("POST", "/accounts", {"name": "gamma", "daily_quota": "lots"}, 400, "daily_quota"),
        ("POST", "/accounts", {"name": "gamma", "daily_quota": -3}, 400, "daily_quota"),
        ("POST", "/accounts", {"name": "gamma", "rate": True}, 400, "rate"),
        ("PATCH", "/accounts/beta", {"delivery_tls": "sometimes"}, 400, "delivery_tls"),
        ("PATCH", "/accounts/beta", {}, 400, None),                              # nothing to change
        ("POST", "/domains", {"account": "beta", "domain": "not a domain"}, 400, "domain"),
        ("POST", "/domains", {"account": "beta", "domian": "beta.example"}, 400, "domian"),   # the typo is named
        ("POST", "/addresses", {"address": "no-at-sign"}, 400, "address"),
        ("GET", "/queue?limit=0", None, 400, "limit"),
        ("GET", "/queue?state=lost", None, 400, "state"),
        ("GET", "/blocklist?expired=maybe", None, 400, "expired"),
        ("PUT", "/warmup/beta.example/gmial", {"day": 2}, 400, "provider"),
        ("PUT", "/webhooks", {"url": "ftp://x.example/", "account": "beta"}, 400, "url"),
        ("PUT", "/tracking", {"account": "beta", "opens": "maybe"}, 400, "opens"),
    ]
    for method, path, body, code, field in cases:
        status, doc = call(relay, method, path, body)
        assert (status, doc.get("field")) == (code, field), (method, path, body, doc)
        assert doc["error"] and not doc["error"].startswith("smtprelay")       # no CLI usage lines

    status, doc = call(relay, "POST", "/accounts", "a string")
    assert status == 400 and "JSON object" in doc["error"]
    assert call(relay, "GET", "/queue/NOSUCHID")[0] == 404
    assert call(relay, "POST", "/domains/nosuch.example/verify")[0] == 404
    assert call(relay, "DELETE", "/webhooks?account=beta")[0] == 404
    status, doc = call(relay, "POST", "/domains/beta.example/resume")
    assert status == 404 and "no sender domain named beta.example" in doc["error"]
    status, doc = call(relay, "DELETE", "/credentials/beta-nosuch")
    assert status == 404 and "beta-nosuch" in doc["error"]

    status, doc = call(relay, "POST", "/domains", {"account": "beta", "domian": "beta.example"})
    assert "this operation takes: account, domain" in doc["error"]
    status, doc = call(relay, "POST", "/accounts/beta/credentials", {"note": "x"})
    assert status == 400 and "this operation takes: none" in doc["error"]        # it truly takes none
    status, doc = call(relay, "GET", "/no/such/route")
    assert status == 404 and "no such route: GET /api/v1/no/such/route" in doc["error"]
    status, doc = call(relay, "DELETE", "/accounts")
    assert status == 405 and "use GET, POST" in doc["error"]

    spec = call(relay, "GET", "/openapi.json", token=None)[1]
    post = spec["paths"]["/accounts"]["post"]
    props = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert props["daily_quota"]["type"] == "integer" and props["rate"]["type"] == "number"
    queue = {p["name"]: p for p in spec["paths"]["/queue"]["get"]["parameters"]}
    assert "hold" in queue["state"]["schema"]["enum"] and queue["all"]["schema"]["type"] == "boolean"
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"
    assert len({op["operationId"] for ops in spec["paths"].values() for op in ops.values()}) == \
        sum(len(ops) for ops in spec["paths"].values())                          # unique operation ids
