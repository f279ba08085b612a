"""Process groups and the layers, communication and optimizer pieces that parallelism is built from."""
