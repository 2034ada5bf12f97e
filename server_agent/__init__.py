"""server_agent package."""
