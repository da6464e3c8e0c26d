"""clsx: fine-tuned text classifiers turned into fast batch inference over Parquet."""

__version__ = "0.1.0"
