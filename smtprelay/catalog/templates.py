"""The catalog's templates on SQLite: a row per template, one per version of its parts.

Owns: the SQL of `templates` and `template_versions`. Deleting marks the row (`deleted_at`)
so statistics still name it; its name is free again. Must never: check a template (the
services do) or render one.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from smtprelay.catalog.records import TemplateRecord

_SELECT = ("SELECT t.id, t.account_id, a.name, t.name, t.description, t.version, t.status, t.status_reason,"
           " t.created_at, t.updated_at, v.subject, v.html, v.text, v.variables FROM templates t"
           " JOIN accounts a ON a.id = t.account_id JOIN template_versions v ON v.template_id = t.id"
           " AND v.version = {version}")


def _record(row: Any) -> TemplateRecord:
    return TemplateRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
                          row[11], row[12], tuple(json.loads(row[13])))


class SqliteTemplates:
    conn: sqlite3.Connection

    def find_templates(self, ref: str, account_id: int | None = None,
                       version: int | None = None) -> list[TemplateRecord]:
        """By id, or by name (several accounts may use one name); the current version unless
        one is named."""
        sql = _SELECT.format(version="?" if version is not None else "t.version") + " WHERE t.deleted_at IS NULL"
        args: list[Any] = [version] if version is not None else []
        if ref.isdigit():
            sql += " AND t.id = ?"
            args.append(int(ref))
        else:
            sql += " AND t.name = ?"
            args.append(ref)
        if account_id is not None:
            sql += " AND t.account_id = ?"
            args.append(account_id)
        return [_record(r) for r in self.conn.execute(sql + " ORDER BY t.id", args)]

    def templates(self, account_id: int | None = None) -> list[TemplateRecord]:
        sql = _SELECT.format(version="t.version") + " WHERE t.deleted_at IS NULL"
        args: list[Any] = []
        if account_id is not None:
            sql += " AND t.account_id = ?"
            args.append(account_id)
        return [_record(r) for r in self.conn.execute(sql + " ORDER BY a.name, t.name", args)]

    def template_names(self) -> dict[int, tuple[str, str]]:
        """Every template ever made, deleted ones too: id → (account, name), for statistics."""
        return {r[0]: (r[1], r[2]) for r in self.conn.execute(
            "SELECT t.id, a.name, t.name FROM templates t JOIN accounts a ON a.id = t.account_id")}

    def insert_template(self, account_id: int, name: str, description: str | None, parts: dict[str, str | None],
                        variables: list[str], now: float) -> int | None:
        """None: the account already has a template of that name."""
        try:
            cur = self.conn.execute(
                "INSERT INTO templates (account_id, name, description, version, status, created_at, updated_at)"
                " VALUES (?, ?, ?, 1, 'active', ?, ?)", (account_id, name, description, now, now))
        except sqlite3.IntegrityError:
            return None
        template_id = int(cur.lastrowid or 0)
        self._insert_version(template_id, 1, parts, variables, now)
        return template_id

    def update_template(self, template_id: int, version: int, description: str | None,
                        parts: dict[str, str | None], variables: list[str], now: float) -> None:
        self._insert_version(template_id, version, parts, variables, now)
        self.conn.execute("UPDATE templates SET version = ?, description = ?, status = 'active', status_reason = NULL,"
                          " updated_at = ? WHERE id = ?", (version, description, now, template_id))

    def rename_template(self, template_id: int, name: str, now: float) -> bool:
        try:
            self.conn.execute("UPDATE templates SET name = ?, updated_at = ? WHERE id = ?", (name, now, template_id))
        except sqlite3.IntegrityError:
            return False
        return True

    def set_template_status(self, template_id: int, status: str, reason: str | None, now: float) -> None:
        self.conn.execute("UPDATE templates SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
                          (status, reason, now, template_id))

    def delete_template(self, template_id: int, now: float) -> None:
        self.conn.execute("UPDATE templates SET deleted_at = ?, updated_at = ? WHERE id = ?", (now, now, template_id))

    def _insert_version(self, template_id: int, version: int, parts: dict[str, str | None], variables: list[str],
                        now: float) -> None:
        self.conn.execute(
            "INSERT INTO template_versions (template_id, version, subject, html, text, variables, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (template_id, version, parts.get("subject"), parts.get("html"),
                                              parts.get("text"), json.dumps(variables), now))

