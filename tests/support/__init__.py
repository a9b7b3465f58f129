"""Test support: real databases and real `terminhub serve` processes."""
