"""Looking inside a network: what each layer computes, where the model looked, what it gets wrong.

capture.py records one forward pass (every leaf module and every torch function between modules,
in the order they ran); `cnnkit shapes` builds its table from it (cnnkit.shapes.trace_model) and
`cnnkit look` its pictures (look.py, gradcam.py). worst.py finds `cnnkit eval --worst`'s images.

Nothing is imported here: cnnkit.shapes imports capture.py, and the models import cnnkit.shapes,
so this package must not pull the models (through look.py) back in.
"""
