"""The indexer: contract events into the SQL mirror, reorg-safe and crash-safe."""
