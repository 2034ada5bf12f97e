"""robot_agent package."""
