"""What the data plane records of each request: its outcome and its signed request id."""
