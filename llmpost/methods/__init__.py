"""Methods: one file per method (its pure loss; its config and trainer where it has its own)."""
