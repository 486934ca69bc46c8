"""Content safety (issue 22): virus scanning through clamd, spam scoring through rspamd, and
what the front end makes of them (`scan`); the quality check of a message before sending
(`quality`).
"""
