"""Runtime helpers every layer may use: the clock, background tasks, the event loop."""
