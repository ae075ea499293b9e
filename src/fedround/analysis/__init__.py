"""What fedround does with finished runs and models: tables, curves,
heatmaps and rankings over sweeps (report), model soups (soups), voting
ensembles (ensembles) and the soups of a run's client models
(client_soups)."""
