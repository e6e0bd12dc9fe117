"""What operators see: request observation, Prometheus metrics and their HTTP server, and
the JSON logs."""
