"""Set-up the modes share (not modes themselves): a run's parts, its data, its strategies."""
