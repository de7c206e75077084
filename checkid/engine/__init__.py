"""The decision engine: pipeline stages, DNS and cache, configuration, policy, CLI."""
