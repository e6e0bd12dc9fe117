"""Where a request enters the backend: the gRPC services (chat and responses, the other routes,
status, keys, console), the checks made before a message is read, and the gRPC edge's errors."""
