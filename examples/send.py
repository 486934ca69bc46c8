"""Send a message through smtprelay's send API from an application, with the standard library
only: a template with data, an attachment, and the answer per recipient.

    SMTPRELAY_URL=http://127.0.0.1:8025 SMTP_USER=acme-... SMTP_PASSWORD=... \\
        python examples/send.py ann@example.org [invoice.pdf]

The credential is one from `smtprelay credential add ACCOUNT`; the template one from
`smtprelay template add ACCOUNT welcome ...` using {{name}}.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def send(message: dict, url: str, user: str, password: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v1/send", data=json.dumps(message).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:      # 4xx/5xx: the body says why, as JSON
        return refused.code, json.loads(refused.read() or b"{}")


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    message = {
        "from": os.environ.get("SMTPRELAY_FROM", "Acme <news@example.com>"),
        "to": [sys.argv[1]],
        "template": {"id": os.environ.get("SMTPRELAY_TEMPLATE", "welcome"), "data": {"name": "Ann"}},
        "tag": "example",
    }
    if len(sys.argv) > 2:
        path = Path(sys.argv[2])
        message["attachments"] = [{"filename": path.name, "content_type": "application/octet-stream",
                                   "content_base64": base64.b64encode(path.read_bytes()).decode()}]
    status, body = send(message, os.environ.get("SMTPRELAY_URL", "http://127.0.0.1:8025"),
                        os.environ["SMTP_USER"], os.environ["SMTP_PASSWORD"])
    print(status, json.dumps(body, indent=2))
    if status == 429:
        print("over a limit: retry after the Retry-After seconds")
    return 0 if status == 202 else 1


if __name__ == "__main__":
    sys.exit(main())
