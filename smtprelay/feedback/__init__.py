"""Inbound feedback (issue 18): VERP return paths and reading bounces and complaint reports."""
