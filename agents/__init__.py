"""voicebus agents: the socket adapters clients talk to, the launcher and the Python client."""
