"""The service manifest: its models, safe YAML, cross-field checks, parsing and ports (pure)."""
