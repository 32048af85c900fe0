"""Multi-tenant, event-sourced command service on NATS JetStream."""
