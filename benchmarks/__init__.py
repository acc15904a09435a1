"""Benchmarks behind `make bench`: DCMTK reference pair vs our acceptor, requestor and router.

Run `python -m benchmarks.run --help` for the flags. Stdlib only (plus the router itself).
"""
