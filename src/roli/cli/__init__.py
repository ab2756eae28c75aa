"""Command-line interface: a thin argparse layer over the Python API."""
