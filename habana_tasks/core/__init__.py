"""Primitives every room uses: typed errors and the failure record, the one place that starts
processes, bounded reads of local files, the HTTP client, safe archive extraction.
May import nothing else from habana_tasks."""
