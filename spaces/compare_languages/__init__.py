"""Package data of the toolkit, installed as `t2i_bias_spaces.compare_languages` (see pipelines/resources.py)."""
