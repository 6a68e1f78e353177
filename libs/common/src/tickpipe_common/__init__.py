"""tickpipe's shared library: the one tick schema and the runtime pieces every service uses."""
