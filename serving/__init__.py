"""Serving: an HTTP service over the trainer's published index versions and model snapshots.

Reads `index_sync`'s on-disk contract (manifest, index files, model and key files) and
never trains. `serving.requests` validates request bodies, `serving.app` answers them.
"""
