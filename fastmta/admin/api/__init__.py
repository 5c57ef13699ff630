"""The admin endpoints, one module per resource; each module lists its endpoints in ENDPOINTS."""
