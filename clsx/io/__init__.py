"""Reading and writing: local paths and object storage, Parquet, labelled tables, durable
writes, staging."""
