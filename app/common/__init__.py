"""What every tab of the app may use: concurrency, on-disk stores, background training jobs, user-facing
errors, the plotly frame, the names of transfer pairs and the Hub check. Imports no tab."""
