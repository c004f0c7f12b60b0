"""The benchmark harness is a script, not a test suite: keep pytest out of this folder."""

collect_ignore_glob = ["*"]
