"""The HTTP gateway: OpenAI's audio API and seed 001's REST endpoints on the bus."""
