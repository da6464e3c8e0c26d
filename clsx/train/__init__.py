"""``clsx train``: LoRA or full fine-tuning on the Hugging Face Trainer, merged output."""
