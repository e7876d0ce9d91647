"""Serving: detector bundles, the ``detector`` pyfunc (request decoding, scores, maps)."""
