"""Package data of the toolkit, installed as `t2i_bias_spaces.clip_score` (see pipelines/resources.py)."""
