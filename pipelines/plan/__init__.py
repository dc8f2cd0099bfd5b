"""Plan (DESIGN steps 1-3): read and validate manifests, expand rows into samples and work units, screen prompts."""
