"""Many processes acting as one proxy through Redis: the connection, the pooled observations and
the lease that makes one replica the decider."""
