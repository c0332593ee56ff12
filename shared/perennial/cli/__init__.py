"""`perennial`: the operator's command line for the trainers' control API and a release's pods.

    perennial status [ADAPTER]             head, candidate, lag, examples, note of one trainer
    perennial status --release RELEASE     the same for every trainer replica of a Helm release
    perennial versions ADAPTER             retained versions, newest first
    perennial snapshot ADAPTER             write a snapshot now
    perennial promote ADAPTER [VERSION]    make a version (default: the candidate) the head
    perennial rollback ADAPTER VERSION     serve VERSION and continue training from it
    perennial pause|resume ADAPTER         stop / restart learning an adapter
    perennial pods RELEASE                 the release's pods and the adapter versions they serve

`perennial --help` and `perennial COMMAND --help` say the rest. Modules: `app` (the commands),
`options` (options accepted before or after the command), `connection` (one trainer's control
API), `cluster` and `pods` (Kubernetes API), `replicas` (every trainer of a release), `render`.
"""

from perennial.cli.app import app, main

__all__ = ["app", "main"]
