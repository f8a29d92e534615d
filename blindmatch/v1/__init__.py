"""Generated from proto/blindmatch/v1 by scripts/generate_proto.py; do not edit."""
