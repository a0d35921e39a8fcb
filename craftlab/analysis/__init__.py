"""Analysis of experiment results: the experiments the notebooks run and the statistics of their claim checks."""
