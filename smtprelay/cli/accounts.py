"""`smtprelay account ...` and `credential ...`: arguments and output (rules: services.accounts)."""
from __future__ import annotations

import argparse
import textwrap

from smtprelay.cli.base import Registry, UsageError, emit, positive_float, positive_int, print_table, services
from smtprelay.config.pools import FALLBACKS
from smtprelay.services.accounts import DELIVERY_TLS, credential_doc


def account_add(args: argparse.Namespace) -> int:
    view = services(args).accounts.add(args.name, args.daily_quota, args.rate)
    emit(args, view.doc(), lambda: print(f"account {view.name} created (daily quota {view.daily_quota}, "
                                         f"rate {view.rate_per_second}/s)"))
    return 0


def account_set(args: argparse.Namespace) -> int:
    if args.daily_quota is None and args.rate is None and args.delivery_tls is None and args.pool is None \
            and args.pool_fallback is None:
        raise UsageError("account set needs --daily-quota, --rate, --delivery-tls, --pool or --pool-fallback")
    view = services(args).accounts.set(args.name, args.daily_quota, args.rate, args.delivery_tls, args.pool,
                                       args.pool_fallback)
    emit(args, view.doc(), lambda: print(f"account {view.name}: daily quota {view.daily_quota}, "
                                         f"rate {view.rate_per_second}/s, egress pool {view.pool} "
                                         f"(fallback: {view.pool_fallback})"))
    return 0


def account_list(args: argparse.Namespace) -> int:
    listing = services(args).accounts.listing()

    def human() -> None:
        print_table(["name", "daily_quota", "rate/s", "level", "credentials", "created", "suspended"],
                    [[v.name, v.daily_quota, v.rate_per_second, v.level, v.credentials, v.doc()["created_at"],
                      v.doc()["suspended_at"]] for v in listing.accounts])
        print()
        print(textwrap.fill(listing.rule, 100))
    emit(args, listing.doc(), human)
    return 0


def account_resume(args: argparse.Namespace) -> int:
    view, released = services(args).accounts.resume(args.name)
    emit(args, {**view.doc(), "released": released},
         lambda: print(f"account {view.name} may send again; {released} held recipient(s) queued again"))
    return 0


def credential_add(args: argparse.Namespace) -> int:
    cred = services(args).accounts.add_credential(args.account)

    def human() -> None:
        print(f"account:  {cred.account}")
        print(f"username: {cred.username}")
        print(f"password: {cred.password}")
        print("The password is shown only this once; only its digest is stored.")
    emit(args, cred.doc(), human)
    return 0


def credential_list(args: argparse.Namespace) -> int:
    docs = [credential_doc(c) for c in services(args).accounts.credentials(args.account)]
    emit(args, {"credentials": docs}, lambda: print_table(
        ["username", "created", "revoked"], [[d["username"], d["created_at"], d["revoked_at"]] for d in docs]))
    return 0


def credential_revoke(args: argparse.Namespace) -> int:
    cred = services(args).accounts.revoke(args.username)
    doc = credential_doc(cred)
    emit(args, {k: doc[k] for k in ("username", "account", "revoked_at")},
         lambda: print(f"credential {cred.username} revoked (a running server refuses it within 2 s)"))
    return 0


def register(reg: Registry) -> None:
    acc = reg.group("account", "manage accounts (tenants)")
    p = reg.command(acc, "add", account_add, "create an account")
    p.add_argument("name")
    p.add_argument("--daily-quota", type=positive_int, help="recipients per rolling 24 h (default from [limits])")
    p.add_argument("--rate", type=positive_float, help="recipients per second (default from [limits])")
    p = reg.command(acc, "set", account_set, "change an account's quota, rate, delivery TLS policy or egress pool")
    p.add_argument("name")
    p.add_argument("--daily-quota", type=positive_int)
    p.add_argument("--rate", type=positive_float)
    p.add_argument("--delivery-tls", choices=list(DELIVERY_TLS),
                   help="TLS policy for this account's outgoing mail (default: delivery.tls)")
    p.add_argument("--pool", help="the [[egress.pools]] its mail goes out from (\"default\": shared); a domain's "
                                  "own pool overrides it")
    p.add_argument("--pool-fallback", choices=list(FALLBACKS) + ["default"],
                   help="when none of the pool's addresses can send: the shared pool (default), or wait")
    reg.command(acc, "list", account_list, "list accounts")
    p = reg.command(acc, "resume", account_resume, "lift a suspension for content (its held mail is queued again)")
    p.add_argument("name")

    cred = reg.group("credential", "manage SMTP credentials")
    p = reg.command(cred, "add", credential_add, "create SMTP credentials; the password is printed once")
    p.add_argument("account")
    p = reg.command(cred, "list", credential_list, "list an account's credentials")
    p.add_argument("account")
    p = reg.command(cred, "revoke", credential_revoke,
                    "revoke a credential (a running server refuses it within 2 s)")
    p.add_argument("username")
