"""rgops: radiogenomics MLOps for lung cancer.

Importing this package has no side effects: no directories are created, no tracking URI is set and
no logging is configured. The CLI (``rgops.cli``) owns output and configuration.
"""

__version__ = "0.1.0"
