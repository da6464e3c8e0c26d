"""batch-predict: the local engine, the Ray engine and resumable output parts."""
