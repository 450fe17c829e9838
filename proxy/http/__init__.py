"""HTTP/1.1 for the data plane, on asyncio protocols with llhttp (through httptools) as the parser:
`server` toward clients; `client`, `pool` and `connection` toward upstreams; `framing` (message
boundaries) and `headers` (field rules) for both. Each module states its invariants at its top."""
