"""The gateway's processes: the supervisor that runs Envoy beside the gRPC backend, the
backend's wiring, the Envoy sidecar (config, process, admin) and readiness."""
