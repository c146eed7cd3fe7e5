"""One-line integrations with training frameworks.

    edgewatch.integrations.hf.EdgewatchCallback          transformers.Trainer
    edgewatch.integrations.lightning.EdgewatchCallback   lightning.Trainer

Each imports its framework only when its module is imported (``pip install
edgewatch[hf]`` / ``edgewatch[lightning]``).
"""
