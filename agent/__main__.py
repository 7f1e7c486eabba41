"""``python -m agent`` is ``evpay-agent``."""

import sys

from agent.cli import main

sys.exit(main())
