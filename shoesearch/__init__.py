"""shoesearch: find a shoe product from a photo of it."""

import os

from core.version import __version__  # noqa: F401 - the CLI's --version

# Prefect: never phone home (hosts are often offline), and keep its state under the user's home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
