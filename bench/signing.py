"""DKIM: time per signature through the relay's signer (smtprelay.dkim.signer: dkimpy's
semantics, the private-key step in OpenSSL), for RSA-2048, Ed25519 and both at once, on
messages of 1, 4 and 64 KB (relaxed/relaxed, the headers the relay signs); beside it, for
RSA-2048 on 4 KB, dkimpy's own `dkim.sign` (pure-Python RSA, the PEM key parsed per call)
with the same key; and the worst case for a worker's loop, one header folded over 0.25–4 MB. Keys are made here with the relay's own key generator. Every signature
of a run is checked once at the end by dkimpy's verifier (not timed).

    .venv/bin/python bench/signing.py [--count 2000]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness import ROOT, Report, percentile

sys.path.insert(0, str(ROOT))
from smtprelay.config import DkimAlgorithm  # noqa: E402
from smtprelay.dkim import keys  # noqa: E402
from smtprelay.dkim.signer import Signer, SigningKey  # noqa: E402


def message(size: int) -> bytes:
    head = (b"From: News <news@bench.example>\r\nTo: friend@sink.test\r\nSubject: a newsletter\r\n"
            b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench.1@bench.example>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def _timed(signer: Signer, message_bytes: bytes) -> float:
    started = time.perf_counter()
    signer.sign(message_bytes)
    return time.perf_counter() - started


def template_costs(report: Report) -> list[list[str]]:
    """What a template costs per MB: compiling (once per version, in the catalog thread),
    rendering and building the MIME (per message; on the loop below INLINE_BYTES, else in a
    thread), and making the text part from HTML."""
    from smtprelay.smtp.templating import INLINE_BYTES
    from smtprelay.templates.compiled import CompiledTemplate
    from smtprelay.templates.markup import to_text
    from smtprelay.templates.message import build
    from smtprelay.templates.request import parse
    rows = []
    for mb in (0.25, 1, 4):
        size = int(mb * 1024 * 1024)
        block = "<p>" + "Thank you for shopping with us, we appreciate it. " * 20 + "</p>\n"
        html = "<h1>Hi {{name}}</h1>" + block * (size // len(block)) + "<p>{{a}} {{b}} {{c}}</p>"
        data = {"name": "<Ann>", "a": 1, "b": 2, "c": 3}
        started = time.perf_counter()
        compiled = CompiledTemplate.of("Hi {{name}}", "Hi {{name}}", html)
        compile_s = time.perf_counter() - started
        rendered = compiled.render(data)
        render_s = min(_seconds(lambda: compiled.render(data)) for _ in range(3))
        text_s = min(_seconds(lambda: to_text(rendered.html or "")) for _ in range(3))
        request = parse({"from": "a@bench.example", "to": ["b@sink.test"], "subject": "s", "html": "x"}, 10)
        build_s = min(_seconds(lambda: build(request, rendered, "s")) for _ in range(3))
        where = "loop" if size <= INLINE_BYTES else "thread"
        for name, seconds, place in (("compile", compile_s, "catalog thread"), ("render", render_s, where),
                                     ("text from HTML", text_s, where), ("build MIME", build_s, where)):
            rows.append([name, f"{mb} MB", f"{seconds * 1000:.1f}", f"{seconds * 1000 / mb:.1f}", place])
            report.data.setdefault("template", []).append({"step": name, "mb": mb, "ms": seconds * 1000})
    return rows


def _seconds(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="signatures per case (default 2000)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    report = Report("signing", save=not args.no_save)
    report.line(f"# the relay's signer, one thread, {args.count} signatures per case after 100 not timed")
    made = {}
    records = {}
    for algorithm, selector in ((DkimAlgorithm.RSA_SHA256, "r1"), (DkimAlgorithm.ED25519_SHA256, "e1")):
        pair = keys.generate(algorithm, 2048)
        made[algorithm] = SigningKey("bench.example", selector, algorithm, pair.private_pem)
        records[f"{selector}._domainkey.bench.example.".encode()] = keys.dns_value(algorithm, pair.public_b64).encode()
    cases = [("RSA-2048", [made[DkimAlgorithm.RSA_SHA256]]), ("Ed25519", [made[DkimAlgorithm.ED25519_SHA256]]),
             ("RSA-2048 + Ed25519", list(made.values()))]
    rows = []
    checks = []
    for name, signing_keys in cases:
        signer = Signer(signing_keys)
        for size in (1024, 4096, 65536):
            body = message(size)
            for _ in range(100):
                signer.sign(body)
            times = []
            for _ in range(args.count):
                started = time.perf_counter()
                signed = signer.sign(body)
                times.append(time.perf_counter() - started)
            checks.append((name, size, signed, len(signing_keys)))
            us = [t * 1e6 for t in times]
            rows.append([name, f"{size // 1024} KB", f"{sum(us) / len(us):.0f}", f"{percentile(us, 50):.0f}",
                         f"{percentile(us, 99):.0f}"])
            report.data.setdefault("cases", []).append({"algorithms": name, "size": size, "mean_us": sum(us) / len(us),
                                                        "p50_us": percentile(us, 50), "p99_us": percentile(us, 99)})
    import dkim
    body = message(4096)
    rsa = made[DkimAlgorithm.RSA_SHA256]
    times = []
    for _ in range(max(10, args.count // 20)):
        started = time.perf_counter()
        dkim.sign(body, b"r1", b"bench.example", rsa.private_pem, canonicalize=(b"relaxed", b"relaxed"))
        times.append(time.perf_counter() - started)
    us = [t * 1e6 for t in times]
    rows.append(["RSA-2048, dkimpy's dkim.sign alone", "4 KB", f"{sum(us) / len(us):.0f}", f"{percentile(us, 50):.0f}",
                 f"{percentile(us, 99):.0f}"])
    report.data["dkimpy_sign_rsa_4k_mean_us"] = sum(us) / len(us)
    report.table(["algorithms", "message", "mean µs", "p50 µs", "p99 µs"], rows)
    # The worst case for one worker's loop: a header folded over many lines (issue 24: dkimpy's
    # rfc822_parse grew it by concatenation, quadratic). The cost must grow linearly with size.
    ed = Signer([made[DkimAlgorithm.ED25519_SHA256]])
    folded = []
    for mb in (0.25, 1, 4):
        lines = int(mb * 1024 * 1024 / 50)
        big = (b"From: a@bench.example\r\nX-Long: start\r\n" + b"".join(b" " + b"x" * 47 + b"\r\n" for _ in range(lines))
               + b"Subject: folded\r\n\r\nbody\r\n")
        best = min(_timed(ed, big) for _ in range(5))
        folded.append([f"{mb} MB", f"{best * 1000:.1f}", f"{best * 1000 / mb:.1f}"])
        report.data.setdefault("folded_header", []).append({"mb": mb, "ms": best * 1000})
    report.line("# one folded header (50-byte continuation lines), Ed25519, best of 5")
    report.table(["header", "ms", "ms per MB"], folded)
    report.table(["template work (issue 16)", "size", "ms", "ms per MB", "where"], template_costs(report))
    failures = []
    for name, size, signed, count in checks:
        for index in range(count):
            try:
                ok = dkim.DKIM(signed).verify(idx=index, dnsfunc=lambda n, timeout=5: records.get(n))
            except dkim.DKIMException:
                ok = False
            if not ok:
                failures.append(f"{name} {size}")
    report.line(f"verified by dkimpy: {'all' if not failures else 'FAILED ' + ', '.join(failures)}")
    report.write()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
