"""Studies: which runs a config implies, and the recorder that trains them."""
