"""chainbill's gateway: a FastAPI app reading the SQL mirror (SPEC §7)."""
