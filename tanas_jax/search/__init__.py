"""Architecture search: cell genotypes and spaces, FUSE, random search, DARTS and TETLO.

Layers (each imports only those above it): ``genotype`` -> ``ops`` -> ``network`` -> ``runtime``
(seeding, compiled-step cache, padded evaluation, the one final training) and ``checkpoint`` ->
``fuse``, ``random_search``, ``darts`` -> ``tetlo`` -> ``methods`` (the registry
``SEARCH_METHODS``); ``spaces`` and ``plots`` serve the entry points.
"""
