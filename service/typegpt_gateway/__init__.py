"""typegpt-gateway: an OpenAI-compatible gateway in front of TypeGPT."""

__version__ = "0.1.0"
