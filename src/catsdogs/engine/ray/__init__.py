"""Past one machine on Ray: batch scoring, feature extraction and multi-worker fine-tuning."""
