"""Model directories: the manifest, fingerprints, bundled models."""
