"""Blindmatch's pure core: the ristretto255 group, RFC 9497 OPRF, threshold keys
and identifier normalization.  No I/O, no gRPC, no clock, no logging set-up."""
