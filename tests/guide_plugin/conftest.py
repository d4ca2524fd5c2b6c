"""Collect the guide package's own tests only where the package is installed (its tests import
it); tests/test_plugin_guide.py installs it into a temporary directory and runs them there."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("diffnas_guide") else ["*"]
