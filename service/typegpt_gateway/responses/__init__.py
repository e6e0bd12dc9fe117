"""The Responses API (`POST /v1/responses`): the bridge to chat completions for upstreams
without it."""
