"""tickpipe consumer service."""
