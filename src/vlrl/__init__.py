"""vlrl."""
