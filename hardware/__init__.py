"""Sort trigger outputs and fire-time scheduling."""
