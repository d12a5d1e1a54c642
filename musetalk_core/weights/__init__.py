"""Which model files exist, where they go, where they come from, and how to fetch them safely.

``registry`` is data only; ``download`` fetches a registered file into a model folder (resumable,
size-capped, sha256-verified, atomic); ``hashing`` computes cached file digests.
"""
