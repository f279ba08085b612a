"""Serving a trained model: an OpenAI-compatible HTTP API with continuous batching, and a chat page."""
