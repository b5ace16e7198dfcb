"""The SQL mirror of the contracts: models, types, engine and the repository that holds
every query."""
