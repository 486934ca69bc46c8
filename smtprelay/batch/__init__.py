"""Recipient groups and sending tasks (issue 17).

`csvfile` reads a group's CSV (pure), `schedule` holds the run-time arithmetic (pure),
`runner` is the back end's task runner, which materialises a task's rows through the
front end's pipeline into the durable queue.
"""
