"""Where a request leaves: the upstreams file, routing and health, retries and failover,
timeouts, and the HTTP client that calls an OpenAI-compatible upstream."""
