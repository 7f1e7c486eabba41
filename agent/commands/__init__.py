"""Sub-commands of the ``evpay-agent`` CLI, one module each with a ``register(subparsers)`` function."""
