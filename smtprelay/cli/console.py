"""`smtprelay console-user ...`: the web console's users (rules: services.console)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, emit, print_table, services
from smtprelay.services.console import user_doc


def add(args: argparse.Namespace) -> int:
    user, password = services(args).console.add(args.name, args.role, args.read_only)
    doc = {**user_doc(user), "password": password}
    emit(args, doc, lambda: print(f"console user {user.name} ({user.role}{', read-only' if user.read_only else ''})\n"
                                  f"password: {password}\n(shown once: only its digest is kept)"))
    return 0


def list_(args: argparse.Namespace) -> int:
    docs = [user_doc(u) for u in services(args).console.list()]
    emit(args, {"users": docs}, lambda: print_table(
        ["name", "role", "read-only", "created", "last login"],
        [[d["name"], d["role"], "yes" if d["read_only"] else "no", d["created_at"], d["last_login_at"]]
         for d in docs]))
    return 0


def delete(args: argparse.Namespace) -> int:
    user = services(args).console.delete(args.name)
    emit(args, {"deleted": user.name}, lambda: print(f"console user {user.name} deleted; its sessions ended"))
    return 0


def password(args: argparse.Namespace) -> int:
    new = services(args).console.new_password(args.name)
    emit(args, {"name": args.name, "password": new},
         lambda: print(f"password: {new}\n(shown once; {args.name}'s sessions ended)"))
    return 0


def register(reg: Registry) -> None:
    cu = reg.group("console-user", "users of the web console (/console/ on [http], when [console] enabled)")
    p = reg.command(cu, "add", add, "add a user; prints its generated password once")
    p.add_argument("name")
    p.add_argument("--role", required=True, help="admin, or account:<name> (sees and changes only that account's)")
    p.add_argument("--read-only", action="store_true", help="may look, not change")
    reg.command(cu, "list", list_, "list users")
    p = reg.command(cu, "delete", delete, "delete a user and end its sessions")
    p.add_argument("name")
    p = reg.command(cu, "password", password, "give a user a new password (printed once); its sessions end")
    p.add_argument("name")
