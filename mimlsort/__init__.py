"""mimlsort: real-time label-free cell sorting by mechanics and morphology.

The importable packages are ``acquisition``, ``tracking``, ``inference``, ``hardware`` and ``app``
(the layout the user asked for). This tiny package holds only what all of them share at the very
bottom of the dependency graph: the version and the exception hierarchy.
"""

__version__ = "0.1.0"
