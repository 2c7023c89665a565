"""Side-by-side speed comparisons with peer libraries (run as scripts; not part of the package)."""
