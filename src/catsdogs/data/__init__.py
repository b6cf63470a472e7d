"""Photos and their labels: reading an image file, finding a dataset's photos (folders or a labels
table), corrections, the integrity scan and the splits."""
