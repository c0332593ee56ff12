"""Perennial's development tooling: the local stack, the service launcher, the demo and the
data sets. Installed with the dev set-up (`make`), never shipped in a service image."""
