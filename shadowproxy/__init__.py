"""shadowproxy: shadow-test machine-learning models in production.

The package layout follows the data flow of a request:
``proxy`` (traffic listener, production relay) → ``shadow`` (sampling, dispatch to
candidates) → ``pairing`` (joined records, the pair log) → comparator and report.
``config`` holds the typed, frozen configuration; ``admin`` and ``observability`` the
operational surface; ``runtime`` the serve lifecycle.
"""

__version__ = "0.1.0"
