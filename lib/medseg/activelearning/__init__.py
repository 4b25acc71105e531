"""Active learning: scoring methods that describe the datastore's labels."""
