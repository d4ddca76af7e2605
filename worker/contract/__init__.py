"""The wire contract: command and event models, validation rules and codes, `decode()`, the provider connections."""
