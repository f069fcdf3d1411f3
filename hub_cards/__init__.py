"""Hub card templates: package data, installed as `t2i_bias_cards` (see pipelines/resources.py)."""
