"""MTA front-ends (one sub-package per protocol), each a pure codec plus a thin server."""
