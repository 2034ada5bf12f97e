"""Client-side subcommands (send, watch, annotate) that talk to agents over MQTT."""
