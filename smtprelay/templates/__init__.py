"""Templates: a subject, text and HTML with `{{variable}}` placeholders, kept per account in
the catalog, rendered for the send API and for SMTP submissions that name one.

engine (Jinja2, sandboxed and narrowed to placeholders), compiled (a template's parts
together), markup (what an HTML body holds), lint (`template check`), message (the MIME a
send request becomes), request (the send API's JSON, validated).
"""
