"""Package data of the toolkit, installed as `t2i_bias_spaces.fairness_metrics` (see pipelines/resources.py)."""
