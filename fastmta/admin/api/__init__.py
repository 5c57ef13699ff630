"""The admin endpoints, one module per resource; each module lists its endpoints in ENDPOINTS, or builds
them in endpoints() when they share something (the event stream its feed, the docs the others' declarations)."""
