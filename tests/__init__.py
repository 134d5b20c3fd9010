"""looper's test suite: a package, so that pytest and the tests name each module once."""
