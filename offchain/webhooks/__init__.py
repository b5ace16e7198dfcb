"""Outgoing webhooks: endpoints, the event outbox and its producer, signed delivery."""
