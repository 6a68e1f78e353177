"""tickpipe market-sim service."""
