"""The data plane: routing a request, forwarding it, shadow copies, ejection."""
