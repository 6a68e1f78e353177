"""tickpipe producer-crypto service."""
