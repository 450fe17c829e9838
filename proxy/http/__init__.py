"""HTTP/1.1 for the data plane, on asyncio protocols with llhttp (through httptools) as the parser:
`listener`, `client_connection` and `request` toward clients; `client`, `pool` and
`upstream_connection` toward upstreams; `framing` (message boundaries) and `headers` (field rules)
for both. Each module states its invariants at its top."""
