"""``tickpipe status``: an operator tool, installed in the development virtualenv only."""
