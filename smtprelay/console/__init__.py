"""The web console (issue 21): server-rendered pages under /console/ over the admin API's routes."""
