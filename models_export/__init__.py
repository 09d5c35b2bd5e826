"""Model export (Hugging Face folder -> duorank model folder). The only place that imports torch/optimum.

Arrives with the models issue; nothing is exported yet.
"""
