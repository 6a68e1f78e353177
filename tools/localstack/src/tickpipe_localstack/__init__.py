"""Development tooling of tickpipe's local stacks (never installed in an image)."""
