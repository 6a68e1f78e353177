"""tickpipe producer-stocks service."""
