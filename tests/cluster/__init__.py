"""The integration cluster's tests: a package, so the `cluster` fixture (package scope) stops
the cluster when the last of them has run, not at the end of the whole session."""
