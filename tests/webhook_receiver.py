"""A webhook receiver for tests, run as its own process: logs every POST (path, headers,
body) as one JSON line and answers with the status code written in --mode-file (default 200),
re-read on every request so a test can take the endpoint down and bring it back."""
from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--mode-file", required=True)
    args = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            mode = Path(args.mode_file)
            status = int(mode.read_text().strip() or 200) if mode.exists() else 200
            with open(args.log, "a") as fh:
                fh.write(json.dumps({"path": self.path, "status": status, "headers": dict(self.headers),
                                     "body": body.decode()}) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
