"""What the training stages read: batches from the prepared images and token files."""
