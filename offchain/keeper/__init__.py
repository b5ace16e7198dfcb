"""The keeper: charges due subscriptions, dunning, lapses, at-risk flags (SPEC §5)."""
