"""The control surface: the admin API, its client and the status page."""
