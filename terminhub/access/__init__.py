"""Access control: API clients (who may call), their secrets, and the bearer tokens they trade them for."""
