"""What catsdogs keeps on disk: the run directory and the export folder (every file name once,
staged writes, readers), the feature cache, and the listing of runs."""
