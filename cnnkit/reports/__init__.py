"""What a person reads about runs: the runs table, curves.png, and the plotting helpers."""
