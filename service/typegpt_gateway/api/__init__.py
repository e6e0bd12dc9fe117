"""Where a request enters the backend: the gRPC services (chat, status, keys), the checks
made before a message is read, and the mapping between gateway errors and gRPC status."""
